"""`python -m clusterdns` runs the CLI."""

from clusterdns.cli import main

raise SystemExit(main())
