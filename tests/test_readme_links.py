"""README.md starts short and every section moved out of it is one link away; every relative
link in the READMEs reaches an existing file, and its #anchor a heading of that file."""

from __future__ import annotations

import re

from prose_numbers import REPO, documents

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slugs(path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    heads = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def _links(path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for doc in documents():
        for target in _links(doc):
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _slugs(dest):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_is_short_and_links_to_the_depth():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    linked = {t.partition("#")[0] for t in _links(readme)}
    for depth in ("pixword_lit/README.md", "experiments/README.md", "results/README.md",
                  "data_prep/README.md"):
        assert depth in linked, depth
        back = {t.partition("#")[0] for t in _links(REPO / depth)}
        assert "../README.md" in back, f"{depth} does not link back to README.md"


def test_the_anchor_rule_is_githubs():
    """The slug rule above, on headings of this repository whose anchors GitHub shows."""
    doc = REPO / "experiments" / "README.md"
    assert {"the-papers-configs-on-gpus", "several-gpus-several-nodes-and-resuming",
            "fidelity-to-the-authors-code"} <= _slugs(doc)
    assert "reading-studies-issue-7-then-issue-23" in _slugs(REPO / "results" / "README.md")
