"""Which augmentation lets one UTD-MHAD modality be recognised on its own — the probe behind the
presets' ``model.rotate`` (docs/results/utd_mhad.md). Training subjects only: leave-one-subject-out over
s1, s3, s5, s7 (the test subjects are never read). One modality's raw sequence, as the store holds
it (resampled to 32 steps; the skeleton with velocities), goes through the presets' temporal
encoder (3 residual conv blocks, width 128) and a linear classifier, on its own; 60 epochs, AdamW,
label smoothing 0.1, seed 0. Prints accuracy per held-out subject and the mean, per augmentation.

    python benchmarks/utd_unimodal_probe.py --root ../shared/data/utd_mhad
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from karmma.data.readers.base import SampleRef  # noqa: E402
from karmma.data.readers.utd_mhad import UTDMHADReader, list_clips  # noqa: E402
from karmma.engine.augment import TokenAugment, VectorRotate  # noqa: E402
from karmma.extractors.backbone import SIGNAL_STEPS  # noqa: E402
from karmma.extractors.extract import backbone_encoder  # noqa: E402
from karmma.modalities import ModalitySpec  # noqa: E402
from karmma.models.encoders import TemporalConvEncoder  # noqa: E402

VARIANTS = {  # name: (modality, time warp, rotation limits about x, y, z)
    "skeleton, warp 0.2": ("skeleton", 0.2, None),
    "skeleton, warp 0.2 + rotate y 0.5": ("skeleton", 0.2, [0.0, 0.5, 0.0]),
    "skeleton, warp 0.2 + rotate y 1.0 (preset)": ("skeleton", 0.2, [0.0, 1.0, 0.0]),
    "inertial, warp 0.2": ("inertial", 0.2, None),
    "inertial, warp 0.2 + rotate xyz 0.3": ("inertial", 0.2, [0.3, 0.3, 0.3]),
    "inertial, warp 0.2 + rotate xyz 0.6 (preset)": ("inertial", 0.2, [0.6, 0.6, 0.6]),
}


class Probe(nn.Module):
    """The presets' temporal encoder (``temporal_conv``) on one modality, averaged over time, and a
    linear classifier."""

    def __init__(self, dim: int, classes: int, width: int = 128, layers: int = 3) -> None:
        super().__init__()
        self.encoder = TemporalConvEncoder(ModalitySpec("probe", SIGNAL_STEPS, dim), width, layers, dropout=0.2)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def load(root: str) -> dict[str, np.ndarray]:
    reader, xs = UTDMHADReader(), {"skeleton": [], "inertial": []}
    encoders = {m: backbone_encoder(reader.modalities[m], "teacher") for m in xs}  # what the store holds
    clips = list_clips(root, "train")
    for clip in clips:
        raw = reader.load(SampleRef(clip.id, {}, "", clip), ("inertial", "skeleton"), "raise")
        for m in xs:
            xs[m].append(encoders[m](raw[m]))
    out = {m: np.stack(v) for m, v in xs.items()}
    return {**out, "label": np.array([c.action for c in clips]), "subject": np.array([c.subject for c in clips])}


def fold(data, modality: str, warp: float, rotate, held_out: int, epochs: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    x, y, s = torch.tensor(data[modality]), torch.tensor(data["label"]), data["subject"]
    tr, va = torch.tensor(s != held_out), torch.tensor(s == held_out)
    mean, std = x[tr].mean((0, 1)), x[tr].std((0, 1)) + 1e-6
    model, turn, aug = Probe(x.shape[-1], 27), VectorRotate(rotate or [0.0, 0.0, 0.0]), TokenAugment(warp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    xt, yt, steps = x[tr], y[tr], epochs * -(-int(tr.sum()) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.1)
    for _ in range(epochs):
        model.train(), turn.train(), aug.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 32):
            idx = perm[i : i + 32]
            loss = F.cross_entropy(model(aug((turn(xt[idx]) - mean) / std)), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return float((model((x[va] - mean) / std).argmax(1) == y[va]).float().mean()) * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the UTD-MHAD folder (Inertial/, Skeleton/)")
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = load(args.root)
    subjects = sorted(set(data["subject"].tolist()))
    print(f"| variant | {' | '.join(f's{s} held out' for s in subjects)} | mean | seconds |")
    print("|---|" + "---:|" * (len(subjects) + 2))
    for name, (modality, warp, rotate) in VARIANTS.items():
        t0 = time.perf_counter()
        accs = [fold(data, modality, warp, rotate, s, args.epochs) for s in subjects]
        cells = " | ".join(f"{a:.1f}" for a in accs)
        print(f"| {name} | {cells} | {np.mean(accs):.1f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
