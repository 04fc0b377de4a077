"""``karmma stream``: one persistent predictor over live or recorded sensors, a JSON line per hop."""

from __future__ import annotations

import argparse
import json
import sys

from karmma.cli.args import positive_int
from karmma.errors import KarmmaError

FAULT_KINDS = ("pause", "black", "end")


def _fault(text: str) -> tuple[str, tuple[float, float, str]]:
    """``SOURCE:KIND:START-STOP`` (``end``: ``SOURCE:end:START``) -> (source, (start, stop, kind))."""
    try:
        source, kind, span = text.split(":")
        a, _, b = span.partition("-")
        start, stop = float(a), float(b) if b else float("inf")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write SOURCE:KIND:START-STOP, e.g. video:pause:3-4") from None
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"{text!r}: the kind is one of {', '.join(FAULT_KINDS)}")
    return source, (start, stop, kind)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v < 3600:
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds above 0 and below an hour")
    return v


TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def cmd_stream(args: argparse.Namespace) -> int:
    from karmma.runtime import AudioSource, SignalSource, VideoSource, load
    from karmma.runtime.sources import is_live

    faults: dict[str, list] = {}
    for source, f in args.fault or []:
        faults.setdefault(source, []).append(f)
    predictor = load(args.model)
    sources = []
    if args.video:
        sources.append(VideoSource(args.video, args.video_format, faults=faults.pop("video", [])))
    audio = args.audio
    if audio is None and args.video and not is_live(args.video, args.video_format) and args.video_audio:
        from karmma.data.media.decode import clip_streams

        if "audio" in predictor.modality_names and "audio" in clip_streams(args.video):
            audio = args.video  # the file's own audio track
    if audio:
        sources.append(AudioSource(audio, args.audio_format, faults=faults.pop("audio", [])))
    for spec in args.signal or []:
        name, sep, src = spec.partition("=")
        if not sep or not name or not src:
            raise KarmmaError(f"--signal {spec!r}: write NAME=SRC, e.g. --signal inertial=imu.csv (SRC - for stdin)")
        sources.append(
            SignalSource(name, src, faults=faults.pop(name, []), time_unit=TIME_UNITS[args.signal_time_unit])
        )
    if faults:
        raise KarmmaError(f"--fault names {sorted(faults)}, which are not sources here (video, audio, a signal name)")
    only = predictor.parse_only(args.modalities) if args.modalities else None
    if args.no_flow:  # flow is the expensive stream: a deployment without it
        only = tuple(m for m in (only or predictor.modality_names) if m != "flow")
    realtime = True if args.realtime else None
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    n = 0
    stream = predictor.stream(sources, hop=args.hop, window=args.window, realtime=realtime, modalities=only,
                              topk=args.topk, max_hops=args.max_hops)  # fmt: skip
    try:
        for hop in stream:
            out.write(json.dumps(hop) + "\n")
            out.flush()
            n += 1
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the reader of stdout went away (| head)
        pass
    finally:
        if out is not sys.stdout:
            out.close()
    for name, why in stream.errors.items():
        print(f"source {name} stopped: {why}", file=sys.stderr)
    print(f"{n} predictions ({predictor.backend}; hops skipped to keep up: {stream.dropped_hops})", file=sys.stderr)
    return 0


def add_stream_command(sub) -> None:
    sp = sub.add_parser("stream", help="predict every hop from live or recorded sensors (JSON lines)")
    sp.add_argument("model", help="an export folder (karmma export --pipeline; no PyTorch), .onnx file or run folder")
    sp.add_argument("--video", help="a video file, an rtsp:// or http:// URL, or a device (with --video-format)")
    sp.add_argument("--video-format", help="PyAV/FFmpeg input format: v4l2 (a camera), lavfi (a test pattern), ...")
    sp.add_argument("--audio", help="an audio file or device (default: the --video file's own audio track)")
    sp.add_argument("--audio-format", help="PyAV/FFmpeg input format: alsa or pulse (a microphone), ...")
    sp.add_argument("--no-video-audio", dest="video_audio", action="store_false",
                    help="do not read audio from the --video file")  # fmt: skip
    sp.add_argument("--signal", action="append", metavar="NAME=SRC",
                    help="a signal modality from t,v1,...,vC CSV lines (a file, - for stdin); repeatable")  # fmt: skip
    sp.add_argument("--signal-time-unit", choices=tuple(TIME_UNITS), default="s",
                    help="the unit of the signals' first column (ns for `rostopic echo -p` output)")  # fmt: skip
    sp.add_argument("--hop", type=_positive, default=0.5, help="seconds between predictions (whole segments)")
    sp.add_argument("--window", type=_positive, help="seconds of sensor data per prediction (default 2)")
    sp.add_argument("--realtime", action="store_true", help="replay files at their own pace (default: as fast as "
                    "possible, nothing dropped); live sources are always real time")  # fmt: skip
    sp.add_argument("--modalities", help="use only these (e.g. rgb+audio; leaving flow out saves most of the time)")
    sp.add_argument("--no-flow", action="store_true", help="leave optical flow out (its tokens absent): the "
                    "cheapest video deployment")  # fmt: skip
    sp.add_argument("--topk", type=positive_int, default=5)
    sp.add_argument("--max-hops", type=positive_int, help="stop after this many predictions")
    sp.add_argument("--fault", action="append", type=_fault, metavar="SOURCE:KIND:START-STOP",
                    help="script a failure (pause, black, end) to test a deployment, e.g. video:black:3-4")  # fmt: skip
    sp.add_argument("--out", help="write the JSON lines here instead of stdout")
    sp.set_defaults(func=cmd_stream)
