"""UTD-MHAD benchmark: prints and saves accuracy per modality subset, the sensor-dropout curve
0-90% and the cost table for teacher, student and the two baselines.

    python benchmarks/utd_mhad.py --root ../shared/data/utd_mhad --out runs/utd_mhad
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from karmma.benchmark import run_utd_mhad_benchmark  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "utd_mhad"))
    p.add_argument("--out", default="runs/utd_mhad")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(run_utd_mhad_benchmark(args.root, args.out, epochs=args.epochs, seed=args.seed, progress=True)["markdown"])
