"""The README stays a front door, and what it and docs/ point at exists."""

from __future__ import annotations

import re

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 400


def test_every_linked_doc_exists():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+\.md)\)", doc.read_text()):
            assert (doc.parent / target).is_file(), f"{doc.name} links {target}"


def test_every_path_named_in_the_architecture_map_exists():
    text = (REPO / "README.md").read_text()
    paths = set(re.findall(r"`(worker/[\w/.]+?)`", text))
    assert len(paths) > 10
    for path in paths:
        if "<" not in path:
            assert (REPO / path).exists(), path
    for name in re.findall(r"`(\w+)`", text.split("## Architecture")[1]):
        if name in ("CONFIGS", "KINDS", "BACKEND", "build_report", "default_preprocess"):
            code = "\n".join(p.read_text() for p in (REPO / "worker").rglob("*.py"))
            assert re.search(rf"\b{name}\b", code), name
