"""The ``karmma`` command line. It prints; the library only logs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from karmma.cli.args import burst_lengths, positive_int, seconds, seed
from karmma.cli.deploy import add_deploy_commands
from karmma.cli.epic import add_epic_commands
from karmma.cli.experiments import add_experiment_commands
from karmma.cli.stream import add_stream_command
from karmma.errors import Interrupted, KarmmaError


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress


def _config(args: argparse.Namespace):
    from karmma.config import load_config
    from karmma.presets import preset_path

    return load_config(preset_path(args.config), args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from karmma.engine import distributed
    from karmma.engine.runs import run_train

    info = distributed.init()
    cfg = _config(args)
    res = run_train(cfg, args.run_dir, resume=not args.no_resume, progress=_progress(args))
    if info.is_main:
        _print_result(res, "model", args.run_dir)
    distributed.shutdown()
    return 0


def _print_result(res, what: str, run_dir: str) -> None:
    """The last epoch's record, the late-fusion weights fitted (if any) and where the model is."""
    print(json.dumps(res.history[-1] if res.history else {}, indent=2))
    if res.fusion_weights:
        named = ", ".join(f"{k} {v:.3g}" for k, v in res.fusion_weights.items())
        print(f"late-fusion weights fitted on the validation split: {named}")
    print(f"{what}: {Path(run_dir) / 'final'}")


def cmd_distill(args: argparse.Namespace) -> int:
    from karmma.engine import distributed
    from karmma.engine.runs import run_distill

    info = distributed.init()
    cfg = _config(args)
    res = run_distill(cfg, args.teacher, args.run_dir, resume=not args.no_resume, progress=_progress(args))
    if info.is_main and res.diagnostics:
        from karmma.engine.diagnostics import format_diagnostics

        print(format_diagnostics(res.diagnostics))
        if res.diagnostics["memorised"]:
            print(
                "warning: the teacher's soft targets are nearly the labels on this data (see above); distillation "
                "can add little: use out-of-fold teacher logits, a higher temperature or a more regularised teacher"
            )
        print()
    if info.is_main:
        _print_result(res, "student", args.run_dir)
    distributed.shutdown()
    return 0


def _named(paths: list[str], names: str | None) -> dict[str, str]:
    labels = names.split(",") if names else [Path(p).name or p for p in paths]
    if len(labels) != len(paths) or len(set(labels)) != len(labels):
        raise KarmmaError("--names needs one distinct name per model, comma separated")
    from karmma.paths import no_dangling_link

    return {label: str(no_dangling_link(p, f"model {label}")) for label, p in zip(labels, paths)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from karmma.engine.runs import run_evaluate
    from karmma.evaluation.evaluate import format_dropout_table, format_table, main_metric, write_results
    from karmma.paths import writable_out

    models = _named(args.models, args.names)
    writable_out(args.out)
    results, tasks = run_evaluate(models, args.val, args.seed, args.repeats, _progress(args),
                                  device=args.device, precision=args.precision, compile=args.compile,
                                  split=args.split, epic=args.epic, bursts=args.bursts,
                                  clip_seconds=args.clip_seconds, raw_root=args.raw_root)  # fmt: skip
    print(f"split: {results['split']}")
    paths = write_results(results, args.out, tasks)
    metric = main_metric(tasks)
    print(format_table(results, metric))
    print()
    print(format_dropout_table(results, metric))
    if args.bursts:
        from karmma.evaluation.evaluate import format_within_clip_table

        print()
        print(f"sensors failing inside the clip (mean burst {args.bursts[0]:g} s):")
        print(format_within_clip_table(results, metric))
    if "epic" in results:
        from karmma.evaluation.epic_eval import format_epic, omitted_groups

        print()
        print("EPIC-KITCHENS-100 metrics (all modalities each segment has):")
        print(format_epic(results["epic"]))
        for group in omitted_groups(args.epic):
            print(f"omitted: {group} in {args.epic}")
    for k, p in paths.items():
        print(f"{k:12s} {p}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from karmma.evaluation.cost import cost_table, format_cost_table, write_cost
    from karmma.io.checkpoint import load_model
    from karmma.paths import writable_out

    named = _named(args.models, args.names)
    writable_out(args.out)
    models = {name: load_model(path)[0] for name, path in named.items()}
    table = cost_table(models, repeats=args.repeats, batch_size=args.batch_size)
    paths = write_cost(table, args.out)
    print(format_cost_table(table))
    for k, p in paths.items():
        print(f"{k:12s} {p}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from karmma.extractors.extract import run_extract, sigterm_as_interrupt
    from karmma.extractors.families import default_family

    with sigterm_as_interrupt():  # SIGTERM stops cleanly, as Ctrl-C does: what is done is kept
        path = run_extract(
            args.dataset,
            args.root,
            args.out,
            split=args.split,
            encoder=args.encoder or default_family(),
            weights=args.weights,
            resume=not args.no_resume,
            progress=_progress(args),
            on_error=args.on_error,
            limit=args.limit,
            workers=args.workers,
            dtype=args.dtype,
            options={
                "annotations": args.annotations,
                "labels": args.labels,
                "boxes": args.boxes,
                "frame_size": args.frame_size,
                "frames": args.frames,
                "audio": args.audio,
            },
            modalities=tuple(m.strip() for m in args.modalities.split(",") if m.strip()) if args.modalities else None,
            allow_mixed_flow=args.allow_mixed_flow,
        )
    print(f"feature store: {path}")
    from karmma.data.store_summary import summary_path

    summary = summary_path(path)
    if summary.is_file():
        info = json.loads(summary.read_text())
        for m, reasons in info["absent"].items():
            why = "; ".join(f"{k}: {v['count']}" for k, v in reasons.items())
            print(f"  {m} absent for {sum(v['count'] for v in reasons.values())} of {info['samples']} ({why})")
        if info["not_written"]:
            print(f"  {len(info['not_written'])} sample(s) had no readable modality and were not written "
                  f"(e.g. {', '.join(info['not_written'][:3])}); listed in {summary}")  # fmt: skip
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from karmma.data.store import brief_info, store_info, token_coverage
    from karmma.data.store_provenance import sources_of

    info = brief_info(store_info(args.store))
    info["token_coverage"] = token_coverage(args.store)
    info["provenance"] = sources_of(args.store)  # {modality: {source: samples}}; the contract is in extra
    print(json.dumps(info, indent=2))  # whole (valid JSON), long lists summarised
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from karmma.presets import list_presets, preset_path

    for name in list_presets():
        print(f"{name:20s} {preset_path(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from karmma.registries import EXTRACTORS, READERS

    p = argparse.ArgumentParser(
        prog="karmma", description="KARMMA: multimodal distillation robust to missing modalities"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, config: bool = True) -> None:
        if config:
            sp.add_argument("--config", required=True, help="a YAML config or a preset name (see `karmma presets`)")
            sp.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="override a config key, e.g. optim.epochs=5",
            )
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    add_experiment_commands(sub)
    add_epic_commands(sub)

    sp = sub.add_parser("train", help="stage 1: train a teacher (or baseline) with cross-entropy")
    common(sp)
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--no-resume", action="store_true")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("distill", help="stage 2: distil a frozen teacher into a student")
    common(sp)
    sp.add_argument("--teacher", required=True, help="teacher run folder or checkpoint")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--no-resume", action="store_true")
    sp.set_defaults(func=cmd_distill)

    sp = sub.add_parser("evaluate", help="every modality subset + sensor dropout 0-90%%")
    common(sp, config=False)
    sp.add_argument("models", nargs="+", help="run folders or checkpoints")
    sp.add_argument("--names", help="comma-separated display names")
    sp.add_argument("--val", help="evaluate on this feature store instead of each model's own val split")
    sp.add_argument("--out", default="runs/eval")
    sp.add_argument("--seed", type=seed, default=0)
    sp.add_argument("--repeats", type=positive_int, default=3, help="sensor-dropout repeats per rate (>= 1)")
    sp.add_argument(
        "--split",
        default="val",
        choices=["val", "test"],
        help="val: where choices are made; test: the final report, read once (ignored with --val)",
    )
    sp.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    sp.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast (for GPUs)")
    sp.add_argument("--compile", action="store_true", help="torch.compile the models' forward")
    sp.add_argument(
        "--epic", metavar="ANNOTATIONS_DIR", help="also the official EPIC-100 metrics (tail/unseen lists from there)"
    )
    sp.add_argument("--bursts", type=burst_lengths, nargs="?", const=(0.5,), default=(), metavar="SECONDS",
                    help="also sensors failing inside the clip, in bursts of this mean length (default 0.5; e.g. "
                         "0.25,0.5,1): per-token presence vs dropping the sensor vs feeding the failure")  # fmt: skip
    sp.add_argument("--clip-seconds", type=seconds, default=3.0,
                    help="with --bursts: a clip's length where the store records none (default 3)")  # fmt: skip
    sp.add_argument("--raw-root", metavar="DIR",
                    help="with --bursts: the raw data the store was extracted from; whole-clip summaries (depth "
                         "motion maps) are then recomputed for each draw of failures instead of kept")  # fmt: skip
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("cost", help="params, FLOPs, memory, latency per modality subset")
    sp.add_argument("models", nargs="+")
    sp.add_argument("--names")
    sp.add_argument("--out", default="runs/cost")
    sp.add_argument("--repeats", type=positive_int, default=30, help="timed forward passes per subset (>= 1)")
    sp.add_argument("--batch-size", type=positive_int, default=1, help="samples per forward pass (>= 1)")
    sp.set_defaults(func=cmd_cost)

    add_deploy_commands(sub)
    add_stream_command(sub)

    sp = sub.add_parser("extract", help="decode media, compute flow, run frozen encoders, write a feature store")
    sp.add_argument(
        "dataset",
        choices=READERS.names(),
        help="a registered dataset reader: utd_mhad (the .mat release), video (a folder of clips + labels.csv), "
        "epic100 (the official download layout), ssv2 (webm videos + Something-Else boxes)",
    )
    sp.add_argument("--root", required=True)
    sp.add_argument("--out", required=True, help="the .h5 feature store to write")
    sp.add_argument("--split", default="all", choices=["all", "train", "test"])
    sp.add_argument(
        "--encoder",
        default=None,
        choices=EXTRACTORS.names(),
        help="a registered extractor family (default: efficientnet where its weights are installed, else pool): "
        "pool (parameter-free); efficientnet (ImageNet EfficientNet-Lite2/Lite0 "
        "frame backbones, depth motion maps and raw signals for trainable encoders); motion_maps (depth only); "
        "cnn (your own encoders, --weights)",
    )
    sp.add_argument("--weights", help="folder of pretrained encoder weights (safetensors), for --encoder cnn")
    sp.add_argument("--annotations", help="epic100: EPIC_100_{train,validation}.csv; ssv2: the train/validation JSON")
    sp.add_argument("--labels", help="ssv2: something-something-v2-labels.json")
    sp.add_argument("--boxes", help="ssv2: Something-Else box JSON (a file or a folder of them)")
    sp.add_argument("--frame-size", type=int, help="video: frame side in px (default 112)")
    sp.add_argument("--frames", type=int, help="video: frames spread over each clip (default 32; 0: every frame)")
    sp.add_argument("--audio", choices=("log_mel", "spectrogram"), help="video: audio features (default log_mel, "
                    "64 bands; spectrogram: karmma 0.2's 32 linear bands)")  # fmt: skip
    sp.add_argument(
        "--on-error",
        default=None,
        choices=["raise", "absent"],
        help="a corrupt media file: stop, or record the modality absent (default: raise; epic100/ssv2: absent)",
    )
    sp.add_argument("--limit", type=int, default=None, help="only the first N clips (smoke tests)")
    sp.add_argument("--modalities", help="extract only these, comma separated (default: the reader's)")
    sp.add_argument("--allow-mixed-flow", action="store_true", help="accept samples whose optical flow comes "
                    "from different algorithms (TV-L1 JPEGs, Farneback from the video); each is recorded")  # fmt: skip
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16"],
        help="feature storage; float16 halves disk and I/O",
    )
    sp.add_argument("--no-resume", action="store_true")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_extract)

    sp = sub.add_parser("info", help="describe a feature store")
    sp.add_argument("store")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("presets", help="list the shipped YAML configs")
    sp.set_defaults(func=cmd_presets)
    return p


def _configure_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "no_progress", True):
        # Progress without a terminal: a line per epoch / per tenth of the work, never a bar.
        logging.getLogger("karmma.progress").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    _configure_logging(args)
    try:
        return args.func(args)
    except Interrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    except KarmmaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # the last line of defence: what was asked for does not fit
        if isinstance(e, RuntimeError) and "memory" not in str(e):
            raise
        why = (str(e).splitlines() or ["MemoryError"])[0][:160]
        print(f"error: out of memory ({why}); ask for less: a smaller --batch-size, --repeats, grid or file",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; nothing was lost that a re-run cannot redo (runs resume from their last checkpoint)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
