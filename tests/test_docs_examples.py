"""The Python examples of the docs run as written: every ```python block of docs/api.md (top to
bottom, one namespace, in an empty folder) and of the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["docs/api.md", "README.md"])
def test_the_python_examples_run_as_written(page, tmp_path, monkeypatch, capsys):
    code = blocks(ROOT / page)
    assert code, f"{page} has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{page} (python block {i + 1})", "exec"), namespace)
        except Exception as e:  # name the block that failed
            raise AssertionError(f"{page}, python block {i + 1} failed: {type(e).__name__}: {e}") from e
    assert capsys.readouterr().out or page == "README.md"
