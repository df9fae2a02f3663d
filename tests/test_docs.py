"""Every ```python block of every page in docs/ runs, so the documentation cannot rot.

The blocks of one page run in order in one shared namespace (a page is one story), every page in
a fresh namespace with a fixed seed. A block that should not run (none so far) would have to be
written as ```text. Pages added later are picked up automatically.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """``(line number, code)`` of each ```python block of a markdown page."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


def test_the_docs_exist():
    names = {page.name for page in PAGES}
    assert {"tutorial.md", "api.md", "numerics.md"} <= names
    for page in PAGES:
        if page.name in {"tutorial.md", "api.md", "numerics.md"}:
            assert python_blocks(page), f"{page.name} has no python block"


def test_block_extraction():
    blocks = python_blocks(DOCS / "tutorial.md")
    assert all(code.strip() for _, code in blocks)
    assert not any("```" in code for _, code in blocks)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_page_runs(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything a page writes lands in a scratch folder
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    for line, code in python_blocks(page):
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page.name}, block at line {line} failed: {error!r}") from error
