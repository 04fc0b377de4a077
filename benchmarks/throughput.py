"""Training throughput (samples/s) and inference latency of student vs. teacher, measured in one
run on this machine, printed as a table with ratios.

    python benchmarks/throughput.py [--teacher-dim 256 --student-dim 128 --batch 64]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from karmma.config import ModelConfig  # noqa: E402
from karmma.data.synthetic import specs  # noqa: E402
from karmma.evaluation.cost import count_flops, latency_ms  # noqa: E402
from karmma.losses import multitask_ce  # noqa: E402
from karmma.models import KARMMA  # noqa: E402

TASKS = {"verb": 97, "noun": 300, "action": 3806}


def train_throughput(model: KARMMA, batch: int, steps: int, device: str) -> float:
    model.train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = [torch.randn(batch, s.num_tokens, s.dim, device=device) for s in model.specs]
    present = torch.rand(batch, len(model.specs), device=device) < 0.7
    present[:, 0] = True
    labels = {t: torch.randint(0, n, (batch,), device=device) for t, n in model.tasks.items()}
    times = []
    for i in range(steps + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = multitask_ce(model(tokens, present), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--teacher-dim", type=int, default=256)
    p.add_argument("--student-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    teacher = KARMMA(
        specs("teacher"), TASKS, ModelConfig(dim=a.teacher_dim, depth=4, attn_heads=8, head_hidden=a.teacher_dim)
    )
    student = KARMMA(
        specs("student"), TASKS, ModelConfig(dim=a.student_dim, depth=4, attn_heads=4, head_hidden=a.student_dim)
    )
    full = tuple(s.name for s in teacher.specs)
    rows = {}
    for name, m in (("teacher", teacher), ("student", student)):
        flops = count_flops(m, full)
        tput = train_throughput(m, a.batch, a.steps, a.device)
        lat = latency_ms(m.eval(), full, batch=1, repeats=50)
        rows[name] = (sum(x.numel() for x in m.parameters()), flops, tput, lat)
    print(f"device: {a.device}, batch {a.batch}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| model | params | GFLOPs (batch 1) | train samples/s | latency ms (batch 1) |")
    print("|---|---:|---:|---:|---:|")
    for name, (params, flops, tput, lat) in rows.items():
        print(f"| {name} | {params / 1e6:.2f}M | {flops / 1e9:.4f} | {tput:.0f} | {lat:.2f} |")
    t, s = rows["teacher"], rows["student"]
    print(f"| student/teacher | {s[0] / t[0]:.2f}x | {s[1] / t[1]:.2f}x | {s[2] / t[2]:.2f}x | {s[3] / t[3]:.2f}x |")


if __name__ == "__main__":
    main()
