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


@pytest.mark.slow
def test_the_epic_quick_start_learns_on_sixteen_segments(tmp_path, monkeypatch, capsys):
    """docs/epic100.md's quick start, command by command, on a tiny EPIC tree: 16 segments of
    three videos (P01_01, P01_101, P02_01), each video's verb and noun its own."""
    import json
    import shlex

    from karmma.cli import main
    from tests.media_trees import epic_csv, epic_tree

    text = (ROOT / "docs/epic100.md").read_text()
    block = re.search(r"<!-- quick-start -->\n```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    epic_tree(tmp_path / "EPIC-KITCHENS", frames_too=False)
    videos = (("P01_01", 6), ("P01_101", 5), ("P02_01", 5))
    rows = [(f"{vid}_{k}", vid, 1 + 18 * k, 30 + 18 * k, c, c) for c, (vid, n) in enumerate(videos) for k in range(n)]
    epic_csv(tmp_path / "annotations" / "EPIC_100_train.csv", rows + [("P02_01_99", "P02_01", 1, 9, 2, 2)])
    monkeypatch.chdir(tmp_path)
    for line in block:
        argv = shlex.split(line)
        if argv[0] == "head":  # head -n 17 SRC > DST: the header and 16 segments
            lines = Path(argv[3]).read_text().splitlines(keepends=True)[: int(argv[2])]
            Path(argv[5]).write_text("".join(lines))
            continue
        assert argv[0] == "karmma", line
        assert main(argv[1:]) == 0, (line, capsys.readouterr().err[-2000:])
    results = json.loads((tmp_path / "runs/small/eval/results.json").read_text())
    assert results["models"]["small"]["subsets"]["rgb+flow+audio"]["verb_top1"] >= 80.0
