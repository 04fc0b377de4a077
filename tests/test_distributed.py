"""torchrun + DDP on CPU (gloo, 2 processes) matches single-process training on a tiny run."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_experiment


def _run(args, nproc=None, tmp=None):
    env = {k: v for k, v in os.environ.items() if k != "KARMMA_FAULT"}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"] if nproc else [sys.executable]  # fmt: skip
    cmd = [*launcher, "-m", "karmma", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "distill"])
def test_ddp_two_processes_match_single_process(tmp_path, stage):
    cfg = tiny_experiment(epochs=2).to_dict()
    cfg["optim"]["batch_size"] = 16  # several steps, each split 8 + 8 across the two ranks
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    if stage == "train":
        common = ["train", "--config", str(tmp_path / "t.yaml"), "--no-progress"]
    else:
        _run(["train", "--config", str(tmp_path / "t.yaml"), "--run-dir", str(tmp_path / "teacher"), "--no-progress"])
        cfg["data"]["feature_set"] = "student"
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
        common = [
            "distill",
            "--config",
            str(tmp_path / "s.yaml"),
            "--teacher",
            str(tmp_path / "teacher"),
            "--no-progress",
        ]
    _run([*common, "--run-dir", str(tmp_path / "single")])
    _run([*common, "--run-dir", str(tmp_path / "ddp")], nproc=2, tmp=tmp_path)
    a = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3), k
