"""The README and docs/: every relative link reaches a file of the repository and, with an
#anchor, one of its headings (GitHub's anchors); nothing links outside the repository; the
README stays a short front page. No torch: this runs in a fraction of a second."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
# [text](target) and ![alt](target); text may hold one level of brackets, and a target may be
# followed by a "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOLINK = re.compile(r"<((?:https?|ftp)://[^>\s]+)>")
BARE_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], None
    for line in text.split("\n"):
        found = FENCE.match(line)
        if fence is None and found:
            fence = found[1][0] * 3
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        lines.append(CODE_SPAN.sub(lambda m: " " * len(m[0]), line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: markup and punctuation dropped (letters, digits,
    underscores, hyphens and spaces kept), lower case, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)                         # inline HTML
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file's headings, duplicates numbered -1, -2, ... as GitHub
    numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text()):
        found = HEADING.match(line)
        if not found:
            continue
        base = slug(found[2].strip())
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return [m[1] for line in prose_lines(path.read_text()) for m in LINK.finditer(line)]


def test_the_slug_follows_githubs_rules():
    assert slug("The seed's hypothesis, tested") == "the-seeds-hypothesis-tested"
    assert slug("Interrupted?") == "interrupted"
    assert slug("Learning rate × batch size") == "learning-rate--batch-size"
    assert slug("`make study`: the whole study") == "make-study-the-whole-study"
    assert slug("Cross-validation, done right") == "cross-validation-done-right"


def test_duplicate_headings_are_numbered(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# A\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n\n## Notes\n")
    assert anchors(page) == {"a", "notes", "notes-1", "notes-2"}


def test_links_in_code_are_not_links(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("[a](x.md) `[b](y.md)`\n\n```\n[c](z.md)\n```\n![d](img.png#top)\n")
    assert links(page) == ["x.md", "img.png#top"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_a_heading(page: Path):
    assert page.read_text().strip(), f"{page} is empty"
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            broken.append(f"{target}: not a relative link")
            continue
        file_part, _, anchor = target.partition("#")
        file = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not file.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor:
            if file.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not markdown")
            elif unquote(anchor) not in anchors(file):
                broken.append(f"{target}: no heading of {file.relative_to(ROOT)} has that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_links_outside_the_repository(page: Path):
    lines = prose_lines(page.read_text())
    external = [t for t in links(page) if re.match(r"^(https?|ftp):|^//|^www\.", t, re.I)]
    external += [m[1] for line in lines for m in AUTOLINK.finditer(line)]
    external += [m[0] for line in lines for m in BARE_URL.finditer(LINK.sub("", line))]
    assert not external, f"{page.relative_to(ROOT)} links outside: {external}"


def test_the_readme_is_a_short_front_page():
    text = README.read_text()
    assert len(text.splitlines()) < 250
    assert "make train" in text and "make test" in text
    assert "## The seed's hypothesis, tested" in text
    # It leads to every page of docs/.
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    assert set(PAGES[1:]) <= linked
