"""A raw clip -> the model's token features, with the model's own extractors (its store's clip
format and encoder family, at the size of its feature set): ``karmma predict --clip``."""

from __future__ import annotations

from pathlib import Path

from karmma.data.raw import Raw
from karmma.errors import DataError


def clip_sample(predictor, clip: str | Path, modalities: tuple[str, ...]) -> Raw:
    """``{modality: (num_tokens, dim)}`` of a raw clip: a :class:`~karmma.data.raw.Raw` whose
    ``absent`` says why each asked modality the clip lacks is missing (no audio track, no video
    stream, ...) and whose ``valid`` marks the tokens a sensor failed for (black or frozen frames,
    a short audio track). A clip with none of the asked modalities is refused, naming what it has."""
    from karmma.data.clips import CLIP_FORMATS, VIDEO_MODALITIES
    from karmma.data.media.decode import NoStream, TooFewFrames, clip_streams
    from karmma.data.raw import Kind, drop_failed
    from karmma.extractors.encoders import encode, token_valid, whole_clip_tokens
    from karmma.paths import no_dangling_link

    ex = predictor.extractor
    if not ex.get("reader"):
        raise DataError("this model records no extractor (trained on a store from an older karmma or another tool); "
                        "extract the clip's features yourself and pass them with --input")  # fmt: skip
    if "://" in str(clip) or str(clip).startswith("/dev/"):
        raise DataError(f"--clip {clip} is a live source (a URL or a device): predict reads one recorded clip; "
                        f"stream it with `karmma stream MODEL --video {clip}`")  # fmt: skip
    clip = no_dangling_link(clip, "--clip")
    if not clip.exists():
        raise DataError(f"clip {clip} does not exist")
    if ex.get("kinds") and ex["reader"] in CLIP_FORMATS:  # the spec saved with the model: no reader imported
        kinds_of = {m: Kind(*v) for m, v in ex["kinds"].items()}
        fmt = CLIP_FORMATS[ex["reader"]]  # decoding as the store recorded (the generic video folder's options)
        decode = lambda path, mods: fmt(path, mods, ex.get("preprocessing"))  # noqa: E731
    else:  # a model from karmma 0.1 (no spec saved), or a plugin's reader: the reader itself says
        from karmma.data.readers.base import reader_class

        reader = reader_class(ex["reader"])
        kinds_of, decode = dict(reader.modalities), reader.read_clip
    try:
        raw = decode(clip, modalities)
    except (NoStream, TooFewFrames) as e:  # none of the asked streams is in the clip
        raw = Raw()
        raw.absent.update(dict.fromkeys(modalities, e.what))
    raw.absent.update(drop_failed(raw, modalities))
    kinds = {m: kinds_of[m] for m in modalities if m in raw}
    encoders = predictor.encoders(kinds) if kinds else {}  # the same family as extraction
    sample = Raw({m: encode(encoders[m], raw[m], raw.valid.get(m)) for m in kinds})
    sample.absent = {m: raw.absent.get(m, "not in the clip") for m in modalities if m not in raw}
    # the tokens a sensor failed for (black or frozen frames, a short audio track): marked absent
    sample.valid = {m: token_valid(raw.valid[m], len(sample[m]), whole_clip_tokens(encoders[m]))
                    for m in kinds if m in raw.valid}  # fmt: skip
    if not sample:
        streams = clip_streams(clip)
        stream = {m: "video" for m in VIDEO_MODALITIES} | {"audio": "audio"}
        has = [s.name for s in predictor.specs if s.name not in sample.absent and stream.get(s.name) in streams]
        why = "; ".join(dict.fromkeys(sample.absent.values()))
        if has:
            raise DataError(f"{clip}: the clip has {why}; it has {', '.join(has)} — drop --modalities or ask for those")
        names = ", ".join(s.name for s in predictor.specs)
        raise DataError(f"{clip}: the clip has {why}; this model takes {names}, and the clip has none of them")
    return sample
