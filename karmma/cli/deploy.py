"""``karmma export`` and ``karmma predict``: the deployment commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from karmma.cli.args import positive_int, seed
from karmma.errors import KarmmaError


def cmd_export(args: argparse.Namespace) -> int:
    from karmma.deploy.export import export_onnx, verify_onnx
    from karmma.io.checkpoint import load_model
    from karmma.paths import no_dangling_link, writable_file

    if args.pipeline:
        from karmma.deploy.export_pipeline import export_pipeline, verify_pipeline

        model, meta = load_model(no_dangling_link(args.model, "model"))
        path = export_pipeline(model, meta, args.out or "deploy")
        report = verify_pipeline(model, path, seed=args.seed)
        print(f"exported {path}/ (fusion, frozen backbones and pipeline.json: runs without PyTorch)")
    else:
        args.out = args.out or "student.onnx"
        if not Path(args.out).is_dir():  # a folder is refused by export_onnx, with a file name to use
            writable_file(args.out, "--out")
        model, meta = load_model(no_dangling_link(args.model, "model"))
        path = export_onnx(model, meta, args.out)
        report = verify_onnx(model, path, seed=args.seed)
        print(f"exported {path}")
    print("| part | max abs diff |\n|---|---:|")
    for subset, diff in report["max_abs_diff"].items():
        print(f"| {subset} | {diff:.2e} |")
    ok = report["ok"]
    print("onnxruntime matches PyTorch on every subset" if ok else f"MISMATCH above tolerance {report['tol']}")
    return 0 if ok else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from karmma.deploy.predict import load_predictor, not_a_clip, read_sample
    from karmma.outputs import not_an_input, write_json_atomic
    from karmma.paths import no_dangling_link, writable_file

    if bool(args.input) == bool(args.clip):
        raise KarmmaError("give one of --input (a features file) or --clip (a video or a folder of frames)")
    if args.input:
        not_a_clip(args.input)
    if args.json:
        writable_file(args.json, "--json")
        not_an_input(args.json, {"--input": args.input or "", "--clip": args.clip or ""})
    predictor = load_predictor(no_dangling_link(args.model, "model"))
    reasons: dict[str, str] = {}
    if args.clip:
        from karmma.deploy.predict import clip_sample, parse_only

        only = parse_only(args.modalities, predictor)
        if args.no_flow:  # flow is the expensive stream: a deployment without it
            only = tuple(m for m in only if m != "flow")
        sample = clip_sample(predictor, args.clip, only)
        reasons = sample.absent
    else:
        sample = read_sample(no_dangling_link(args.input, "--input"), only=args.modalities)
    out = predictor.predict(sample, topk=args.topk)
    if args.clip and (args.modalities or args.no_flow):
        left = "left out by --modalities" if args.modalities else "left out by --no-flow"
        reasons = {m: reasons.get(m, left) for m in out["absent"]}
    print(f"modalities used: {', '.join(out['present']) or '-'}   (absent: {', '.join(out['absent']) or '-'})")
    for why in dict.fromkeys(reasons.values()):
        print(f"  {', '.join(m for m, w in reasons.items() if w == why)}: {why}")
    if out.get("token_coverage"):  # modalities present for part of the clip
        print("present for part of the clip: " + ", ".join(f"{m} {100 * c:.0f}% of its tokens"
                                                          for m, c in out["token_coverage"].items()))  # fmt: skip
    for task, rows in out["topk"].items():
        print(f"{task}:")
        for rank, (cid, name, prob) in enumerate(rows, 1):
            print(f"  {rank}. {name} (id {cid})  p={prob:.3f}")
    if args.json:
        write_json_atomic(args.json, {**out, "absent_reasons": reasons} if reasons else out)
    return 0


def add_deploy_commands(sub) -> None:
    sp = sub.add_parser("export", help="export a model to ONNX (presence mask as an input), verified in onnxruntime")
    sp.add_argument("model")
    sp.add_argument("--out", help="the .onnx file (default student.onnx); with --pipeline, a folder (default deploy)")
    sp.add_argument(
        "--pipeline",
        action="store_true",
        help="export the whole pipeline (frozen backbones, "
        "fusion, heads, preprocessing spec) into a folder; predict and stream run it without PyTorch",
    )

    sp.add_argument("--seed", type=seed, default=0)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("predict", help="predict one sample from whatever modalities it has")
    sp.add_argument("model", help="an .onnx file or a checkpoint/run folder")
    sp.add_argument("--input", help=".npz/.safetensors with one (num_tokens, dim) array per available modality "
                    "(and <modality>.valid: which of its tokens hold data, if it failed in the clip)")  # fmt: skip
    sp.add_argument("--clip", help="a raw clip: a video (MP4/WebM/MKV, audio track optional), an audio file (WAV, "
                    "M4A) or a folder of frames, extracted with the model's own extractors; a stream the clip lacks "
                    "is absent, and a long clip is read in bounded memory")  # fmt: skip
    sp.add_argument("--modalities", help="use only these (e.g. rgb+audio)")
    sp.add_argument("--no-flow", action="store_true", help="with --clip: leave optical flow out (its tokens absent)")
    sp.add_argument("--topk", type=positive_int, default=5, help="how many classes to show per task (>= 1)")
    sp.add_argument("--json", help="also write the prediction as JSON here")
    sp.set_defaults(func=cmd_predict)
