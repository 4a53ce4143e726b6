"""The documentation's links: every relative link of README.md, docs/ and benchmarks/ reaches a file
of the repository, and every #anchor a heading of the page it points into (GitHub's anchors)."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def text_outside_code(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in page.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def anchors_of(page: Path) -> set[str]:
    found: set[str] = set()
    for line in text_outside_code(page):
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            base = anchor(match[1])
            name, n = base, 0
            while name in found:  # repeated headings get -1, -2, ...
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links_of(page: Path) -> list[str]:
    return [m[1] for line in text_outside_code(page) for m in LINK.finditer(line)]


def test_anchor_matches_githubs_rule():
    assert anchor("Choosing L, s and the checkpoint on held-out data: `tune.py`") == \
        "choosing-l-s-and-the-checkpoint-on-held-out-data-tunepy"
    assert anchor("`make compare`: every method, chosen and scored alike") == \
        "make-compare-every-method-chosen-and-scored-alike"


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links_of(page):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:: not followed (no network here)
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif fragment and dest.suffix == ".md" and fragment not in anchors_of(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken_links(page), f"{page.relative_to(REPO)}: " + "; ".join(broken_links(page))


def test_the_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Top\n[ok](#top) [gone](#nowhere) [file](b.md#x)\n```\n[in code](#ignored)\n```\n")
    (tmp_path / "b.md").write_text("## X\n")
    assert links_of(page) == ["#top", "#nowhere", "b.md#x"]
    assert anchors_of(page) == {"top"} and anchors_of(tmp_path / "b.md") == {"x"}
    assert broken_links(page) == ["#nowhere: no heading #nowhere in a.md"]
    (tmp_path / "b.md").unlink()
    assert broken_links(page)[1].startswith("b.md#x: no file")
