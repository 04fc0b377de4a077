"""The dataset commands of the ``karmma`` CLI for EPIC-KITCHENS-100: ``import-features`` (community
pre-extracted features into a store) and ``submit`` (the action-recognition challenge file)."""

from __future__ import annotations

import argparse

from karmma.cli.args import positive_int


def cmd_import_features(args: argparse.Namespace) -> int:
    from karmma.data.feature_import import import_features
    from karmma.data.store_summary import summary_path

    summary = import_features(
        args.format, args.source, args.annotations, args.out, tokens=args.tokens,
        feature_set=args.feature_set, dtype=args.dtype, progress=not args.no_progress, stride=args.stride,
        window=args.window, fps=args.fps, modality=args.modality,
    )  # fmt: skip
    print(f"feature store: {args.out} ({summary['samples']} segments)")
    for m, shape in summary["modalities"].items():
        print(f"  {m}: {shape[0]} tokens x {shape[1]}, absent for {summary['absent'][m]} segment(s)")
    if summary["not_written"]:
        print(f"  {len(summary['not_written'])} annotated segment(s) had no features and were not written "
              f"(e.g. {', '.join(summary['not_written'][:3])}); listed in {summary_path(args.out)}")  # fmt: skip
    if summary["unmatched_count"]:
        print(f"  {summary['unmatched_count']} feature row(s) match no annotated segment (ignored)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from karmma.data.dataset import check_fits, require_samples
    from karmma.data.readers.epic import write_submission
    from karmma.data.store import open_store
    from karmma.data.store_summary import summary_path
    from karmma.errors import DataError
    from karmma.evaluation.epic_eval import make_submission
    from karmma.io.checkpoint import load_model
    from karmma.outputs import not_an_input
    from karmma.paths import no_dangling_link, writable_file

    writable_file(args.out, "--out")  # before the predictions
    not_an_input(args.out, {"--store": args.store})
    model, meta = load_model(no_dangling_link(args.model, "model"))
    data = open_store(args.store, meta.get("feature_set", "teacher"))
    require_samples(data, "prediction")
    missing = submission_gaps(args.store, data.ids, args.annotations)
    if missing and not args.allow_incomplete:
        raise DataError(
            f"{args.store}: {len(missing)} segment(s) of the split have no features, so no prediction "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); the challenge scores every narration "
            f"id. Re-extract them (why each is missing: {summary_path(args.store)}), or pass --allow-incomplete"
        )
    if missing:
        print(f"warning: {len(missing)} segment(s) left out of the submission (--allow-incomplete)")
    check_fits(model.specs, model.tasks, meta.get("class_names", {}), data, f"model {args.model}")
    sub = make_submission(model, data, (args.sls_pt, args.sls_tl, args.sls_td), where=str(args.model))
    path = write_submission(args.out, sub)
    print(f"submission: {path} ({len(sub['results'])} segments, format {sub['version']}, {sub['challenge']})")
    if args.out.endswith(".json"):
        print("the challenge server takes a .zip holding test.json: pass --out submission.zip")
    return 0


def submission_gaps(store: str, ids: list[str], annotations: str | None) -> list[str]:
    """The narration ids of the split without a prediction: the store's segments that were never
    written (nothing readable, an interrupted extraction) and, given the annotation file
    (``EPIC_100_test_timestamps.csv``), its ids that the store lacks."""
    from karmma.data.readers.epic import read_id_list
    from karmma.data.store import all_ids

    have = set(ids)
    missing = [i for i in all_ids(store) if i not in have]
    if annotations:
        known = set(missing) | have
        missing += sorted(i for i in read_id_list(annotations, "narration_id") if i not in known)
    return missing


FEATURE_FORMATS = ("mtcn", "npy", "tbn", "actionformer", "tim", "ego4d", "timeline")


def add_epic_commands(sub: argparse._SubParsersAction) -> None:

    sp = sub.add_parser("import-features", help="community pre-extracted EPIC-100 features -> a feature store")
    sp.add_argument("--format", required=True, choices=FEATURE_FORMATS,
                    help="per segment: mtcn (HDF5 visual_features/audio_features), npy (<modality>/<narration_id>.npy "
                    "or <narration_id>.npz), tbn (EPIC UDA TBN pickles, a restricted unpickler); per video, by "
                    "timestamps: actionformer (<video_id>.npz feats, stride 16 / window 32 at 30 fps), tim "
                    "(<video_id>.npy, 0.2 s / 1 s), ego4d (<video_id>.npy, 16 / 32 at 30 fps), timeline (--stride "
                    "--window --fps)")  # fmt: skip
    sp.add_argument("--source", required=True, help="the feature file or folder")
    sp.add_argument("--annotations", required=True, help="EPIC_100_train.csv / _validation.csv / _test_timestamps.csv")
    sp.add_argument("--out", required=True, help="the .h5 feature store to write")
    sp.add_argument("--tokens", type=positive_int, help="tokens per modality (default: the most common clip count; "
                    "8 for per-video formats)")  # fmt: skip
    sp.add_argument("--stride", type=float, help="timeline: the features' stride (frames at --fps, or seconds)")
    sp.add_argument("--window", type=float, help="timeline: each feature's window (frames at --fps, or seconds)")
    sp.add_argument("--fps", type=float, help="timeline: the frame rate --stride and --window count in")
    sp.add_argument("--modality", default="rgb", help="per-video formats: the modality a folder of files holds "
                    "(a folder of sub-folders names one modality each)")  # fmt: skip
    sp.add_argument("--feature-set", default="teacher", help="the feature-set name (data.feature_set)")
    sp.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_import_features)

    sp = sub.add_parser("submit", help="the EPIC-KITCHENS-100 action-recognition challenge file for a store")
    sp.add_argument("model", help="run folder or checkpoint")
    sp.add_argument("--store", required=True, help="feature store of the segments to submit (e.g. the test split)")
    sp.add_argument("--out", default="submission.zip", help=".zip (test.json inside, for the server) or .json")
    for flag, what in (("--sls-pt", "pre-training"), ("--sls-tl", "training labels"), ("--sls-td", "training data")):
        sp.add_argument(flag, type=int, required=True, choices=range(6), metavar="0-5",
                        help=f"supervision level of {what} (required: every entry declares it)")  # fmt: skip
    sp.add_argument("--annotations", metavar="CSV",
                    help="EPIC_100_test_timestamps.csv: also refuse if the store lacks one of its ids")  # fmt: skip
    sp.add_argument("--allow-incomplete", action="store_true",
                    help="submit although segments of the split lack a prediction (the server rejects it)")  # fmt: skip
    sp.set_defaults(func=cmd_submit)
