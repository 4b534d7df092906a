"""The documents a reader meets first: links that lead somewhere, and a README short enough to read.

These run in the student edition too, where README.md and HANDOUT.md have lost their instructors'
blocks: every link left there must still resolve.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
DOCUMENTS = sorted(ROOT.glob("*.md"))


def relative_links(text):
    """The targets of the markdown links in `text` that point into the repository (no URL, no
    anchor)."""
    targets = (m[1].split("#")[0] for m in LINK.finditer(text))
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


def test_link_finder():
    text = ("See [the sheet](HANDOUT.md), ![fig](figures/a.png), [web](https://x.org/a) "
            "and [top](#set-up).")
    assert relative_links(text) == ["HANDOUT.md", "figures/a.png"]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    missing = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 210, (f"README.md has {lines} lines; "
                          "keep it to about 200 (details go to the other documents)")
