"""The documentation's links: every relative link and #anchor in README.md and docs/*.md
resolves, every page of docs/ is linked from the README, and the README stays short.

Anchors are made the way GitHub makes them from a heading: lower case, every character
that is not a letter, digit, `_`, `-` or space dropped, spaces as `-`, and a repeated
heading numbered (`limits`, `limits-1`). Links inside fenced code blocks are not links.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_LINES_AT_MOST = 100  # a screen or two

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> list[str]:
    """The lines of a Markdown text with every fenced code block blanked out."""
    lines, fenced = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fenced is None and match:
            fenced = match.group(1)
        elif fenced is not None and match and match.group(1) == fenced:
            fenced = None
        else:
            lines.append("" if fenced else line)
            continue
        lines.append("")
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before numbering repeats)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text: str) -> list[str]:
    """The anchors of a Markdown text's headings, in order, repeats numbered as GitHub does."""
    seen: Counter[str] = Counter()
    found = []
    for line in prose(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.append(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def links(text: str) -> list[str]:
    """The targets of a Markdown text's links and images, outside code blocks."""
    return LINK.findall("\n".join(prose(text)))


def broken_links(page: Path) -> list[str]:
    """The links of a page that do not resolve: `target (why)`, in the page's order."""
    broken = []
    for target in links(page.read_text()):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no file {path})")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text())):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    return broken


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_link_and_anchor_resolves():
    assert {str(page.relative_to(ROOT)): broken_links(page) for page in pages()} == {
        str(page.relative_to(ROOT)): [] for page in pages()}


def test_the_readme_links_every_page_and_fits_on_two_screens():
    readme = (ROOT / "README.md").read_text()
    linked = {target.partition("#")[0] for target in links(readme)}
    assert {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")} - linked == set()
    assert len(readme.splitlines()) <= README_LINES_AT_MOST


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B\n\n## Limits\n\n### Limits\n\n## `connstats stats [IFACE]`\n")
    page = tmp_path / "a.md"
    page.write_text(
        "# A: the *first*\n"
        "[ok](#a-the-first) [ok](docs/b.md#limits-1) [ok](docs/b.md#connstats-stats-iface)\n"
        "[web](https://example.com/x#y) ![picture](docs/b.md)\n"
        "[gone](#nowhere) [gone too](docs/b.md#limits-2)\n"
        "[no file](docs/c.md) [two\nlines](#also-nowhere)\n"
        "```\n[in code](#not-a-link)\n# not a heading\n```\n")
    assert broken_links(page) == [
        "#nowhere (no heading #nowhere in a.md)",
        "docs/b.md#limits-2 (no heading #limits-2 in b.md)",
        "docs/c.md (no file docs/c.md)",
        "#also-nowhere (no heading #also-nowhere in a.md)",
    ]
    assert anchors(page.read_text()) == ["a-the-first"]
