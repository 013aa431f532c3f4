"""The representation comparison (fmnist_lab.compare's compare.md) as a section of the report."""

from __future__ import annotations

import re
from pathlib import Path

from fmnist_lab.report.runs import relative

COMPARE_FILE = "compare.md"


def compare_sections(root: Path) -> list[str]:
    """Every `compare.md` below `root` (fmnist_lab.compare) as a section of the report.

    Its headings shift so its top one sits at the report's section level (##); its image
    links, relative to its own folder, are made relative to `root`.
    """
    sections = []
    for path in sorted(root.rglob(COMPARE_FILE)):
        folder = relative(path.parent, root)
        lines, headings, fenced = path.read_text().strip().splitlines(), [], False
        for i, line in enumerate(lines):
            fenced ^= line.startswith("```")
            if not fenced and re.match(r"#+\s", line):
                headings.append(i)
            if folder != ".":
                lines[i] = re.sub(r"(!\[[^\]]*\]\()(?![a-z]+://|/)", rf"\g<1>{folder}/", line)
        shift = 2 - min((len(lines[i]) - len(lines[i].lstrip("#")) for i in headings), default=2)
        for i in headings:
            lines[i] = "#" * shift + lines[i] if shift >= 0 else lines[i][-shift:]
        source = f"From `{folder}/{COMPARE_FILE}`."
        if headings:
            first = headings[0]
            lines[first + 1:first + 1] = ["", source]
        else:
            lines[:0] = ["## Representation comparison", "", source, ""]
        sections.append("\n".join(lines) + "\n")
    return sections
