"""One declaration per option: default, reason, check, flag, and whether a reload applies it.

A settings class is a plain dataclass whose fields are made with `option(...)` (or
`section(...)` for a nested group). Everything else reads that one declaration: the YAML
loader (type hints and `check`), the generated flags (`flag`, `metavar`, `invert`, `comma`,
`const`), reload (`restart`), `check-config`, and the option reference in docs/options.md
(`doc`). Nothing is parsed from source text at run time, and no default lives anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field
from typing import Any

#: a value check: None when the value is fine, else what was expected ("0..3600 seconds")
Check = Callable[[Any], str | None]


class ConfigError(ValueError):
    """One or more problems in a config file or in flags; `problems` lists them all, each
    naming the file (or "command line"), the line, the key path and what was expected."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Option:
    """What one field of a settings class means beyond its type and default."""

    doc: str
    """One line: what it does and why the default is what it is (shown in --help and the docs)."""
    check: Check | None = None
    """Checks a scalar value; for a list, each item; for a mapping of lists, each listed item."""
    keys: Check | None = None
    """Checks each key of a mapping."""
    example: str | None = None
    """Shown when a value has the wrong type, for keys whose shape is not obvious."""
    flag: str | None = ""
    """The command-line flag: "" derives `--[section-]name`, None means no flag."""
    metavar: str | None = None
    invert: bool = False
    """A bool flag that sets the option to False (`--no-loop-detect`)."""
    comma: bool = False
    """A list flag given once as `A,B,C` instead of repeated."""
    const: Any = None
    """The value of a flag given without one (`--resolv-conf` alone means /etc/resolv.conf)."""
    restart: bool = False
    """A running process cannot apply a change: sockets, the record source, the process layout."""


def option(default: Any = MISSING, doc: str = "", *, factory: Callable[[], Any] | Any = MISSING, **meaning: Any) -> Any:
    """A settings field; `default` for immutable values, `factory` for lists and mappings."""
    return field(
        default=default, default_factory=factory, metadata={"option": Option(" ".join(doc.split()), **meaning)}
    )


def section(cls: type, doc: str) -> Any:
    """A nested group of settings (a YAML mapping; its options' flags are `--<name>-<option>`)."""
    return field(default_factory=cls, metadata={"option": Option(" ".join(doc.split()), flag=None)})


def meaning(f: Field[Any]) -> Option:
    """The Option declared for a field (an undeclared one is an error in the schema test)."""
    return f.metadata.get("option") or Option("")
