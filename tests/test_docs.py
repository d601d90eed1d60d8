"""The docs hold together: README.md stays a short front page whose first block is the two
set-up commands (people and CI copy them), it links every page of docs/, and no relative
link in README.md, ARCHITECTURE.md or docs/ points at a file or heading that is not there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, ROOT / "ARCHITECTURE.md", *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 220

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+\s+(.*?)\s*#*$", re.M)


def prose(text: str) -> str:
    """The text without code: a `[x](y)` inside a code block or span is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercased, punctuation dropped, spaces to dashes."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", path.read_text()))}


def readme_read_on() -> list[str]:
    """Link targets of the README's "Read on" section, in order."""
    text = README.read_text()
    m = re.search(r"^## Read on\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "README.md has a '## Read on' section"
    return links(m.group(1))


def test_link_finder_skips_code_and_keeps_anchors() -> None:
    text = "see [a](docs/a.md#x) and `[b](b.md)`\n```\n[c](c.md)\n```\n[d](https://example.com)\n"
    assert links(text) == ["docs/a.md#x", "https://example.com"]
    assert [t for t in links(text) if relative(t)] == ["docs/a.md#x"]
    assert slug("`clusterdns node-cache` options") == "clusterdns-node-cache-options"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for target in filter(relative, links(page.read_text())):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_readme_stays_a_short_front_page() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_readme_links_every_docs_page_and_each_exists() -> None:
    linked = readme_read_on()
    missing = [t for t in linked if relative(t) and not (ROOT / t.partition("#")[0]).exists()]
    assert not missing, f"README's Read on links pages that do not exist: {missing}"
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md")}
    assert pages, "docs/ has pages"
    unlisted = sorted(pages - {t.partition("#")[0] for t in linked})
    assert not unlisted, f"docs pages missing from README's Read on: {unlisted}"
    assert "ARCHITECTURE.md" in linked


def test_readme_opens_with_the_two_set_up_commands() -> None:
    """The first fenced block, before any section, is `make run` then `make test`."""
    text = README.read_text()
    first = FENCE.search(text)
    assert first, "README.md has a fenced block"
    assert "\n## " not in text[:first.start()], "the set-up commands come before the first section"
    commands = [ln.split("#")[0].strip() for ln in first.group(0).splitlines()[1:-1]]
    assert commands[:2] == ["make run", "make test"], commands
