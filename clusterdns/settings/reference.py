"""The option reference (docs/options.md), written from the schema's declarations.

`python -m clusterdns.settings.reference docs/options.md` rewrites the page; a test fails
when the page and the schema disagree.
"""

from __future__ import annotations

import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from clusterdns.options.declare import meaning
from clusterdns.settings.flags import flags
from clusterdns.settings.schema import MODES, SCHEMAS, CommonSettings

INTRO = """# Options

Every setting of both modes, as a key of the `--config` file (each declared once, in
settings/schema.py or in the section of the component it configures; this page is generated
from them: `python -m clusterdns.settings.reference docs/options.md`).
Each has a flag: `--<key>` with dashes (a section's keys as `--<section>-<key>`), except where the
Flag column says otherwise. See [configuration.md](configuration.md) for the file itself, the
precedence of defaults, file and flags, and `check-config`.
"""


def reference(mode: str) -> list[tuple[str, str, str]]:
    """(key path, default as YAML, reason) for every option of `mode`: the mode's own keys first,
    then the ones both modes share, then the sections."""
    rows: list[tuple[str, str, str]] = []
    common = {f.name for f in fields(CommonSettings)}

    def walk(obj: Any, prefix: str) -> None:
        order = sorted(fields(obj), key=lambda f: (is_dataclass(getattr(obj, f.name)), f.name in common))
        for f in order:
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            default = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            rows.append((prefix + f.name, default, meaning(f).doc))

    walk(SCHEMAS[mode](), "")
    return rows


def markdown() -> str:
    """docs/options.md: one table per mode, key, default, flag and reason."""
    out = [INTRO]
    for mode in MODES:
        names = {f.path: f.name for f in flags(SCHEMAS[mode])}
        out.append(f"\n## `clusterdns {mode}` options\n\n| key | default | flag | why |\n|---|---|---|---|")
        for key, default, why in reference(mode):
            out.append(f"| `{key}` | `{default}` | `{names[key]}` | {why.replace('|', '/')} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(markdown()) if len(sys.argv) > 1 else sys.stdout.write(markdown())
