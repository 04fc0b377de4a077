"""UTD-MHAD benchmark: accuracy per modality subset and under 0-90% sensor dropout for teacher,
student and the two baselines, mean ± std over seeds, and the full-pipeline cost table. The same
as `karmma utd-mhad`.

    python benchmarks/utd_mhad.py --root ../shared/data/utd_mhad --out runs/utd_mhad --seeds 0,1,2
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from karmma.experiments.utd_mhad import run_utd_mhad_benchmark  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "utd_mhad"))
    p.add_argument("--out", default="runs/utd_mhad")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    print(run_utd_mhad_benchmark(args.root, args.out, seeds=seeds, epochs=args.epochs, progress=True)["markdown"])
