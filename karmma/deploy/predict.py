"""``karmma predict``: one sample, whatever modalities the device has, from an ONNX file or a
checkpoint. The sample is an ``.npz`` or ``.safetensors`` file with one ``(num_tokens, dim)``
array per available modality (a modality not in the file is absent), and for a modality present
for part of the clip a ``(num_tokens,)`` array ``<modality>.valid`` of which tokens hold data
(:data:`VALID_SUFFIX`; bool, or 0/1) — or a raw clip
(:func:`clip_sample`: a video with or without an audio track, or a folder of frames), decoded and
run through the same frozen extractors that made the model's training features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from karmma.data.dataset import tokens_from_mapping
from karmma.data.safe_files import check_features_dtype, read_npz
from karmma.errors import DataError
from karmma.io.checkpoint import load_model
from karmma.limits import DECLARED_BYTES
from karmma.modalities import ModalitySpec, parse_subset

VALID_SUFFIX = ".valid"  # "<modality>.valid" in a sample file: which of its tokens hold data


def read_sample(path: str | Path, only: str | None = None) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sample file {path} does not exist")
    if path.suffix not in (".npz", ".safetensors"):
        raise DataError(f"{path}: use an .npz or .safetensors file with one (num_tokens, dim) array per modality")
    try:
        if path.suffix == ".npz":
            with open(path, "rb") as f:
                if f.read(4) != b"PK\x03\x04":
                    raise DataError(f"{path}: not an .npz archive (no zip signature); write it with numpy.savez")
            # each member's declared size and shape checked before its data is read (no zip bomb)
            sample = read_npz(path)
        else:
            from safetensors.numpy import load_file

            DECLARED_BYTES.check(path.stat().st_size, str(path))  # read whole into memory
            sample = load_file(str(path))
    except DataError:
        raise
    except (OSError, RuntimeError, Exception) as e:  # zip/safetensors decoding errors
        raise DataError(f"{path}: cannot read the sample ({type(e).__name__}: {e}); the file is corrupt") from e
    from karmma.data.raw import Raw

    flags = {k.removesuffix(VALID_SUFFIX): sample.pop(k) for k in [k for k in sample if k.endswith(VALID_SUFFIX)]}
    for name, arr in sample.items():
        check_features_dtype(arr.dtype, f"{path}: modality {name!r}")
    out = Raw(sample)
    for name, v in flags.items():
        where = f"{path}: {name}{VALID_SUFFIX}"
        if name not in sample:
            raise DataError(f"{where} marks the tokens of a modality the file does not hold; add its tokens or drop it")
        flag_like = v.dtype == np.bool_ or (np.issubdtype(v.dtype, np.integer) and np.isin(v, (0, 1)).all())
        if v.ndim != 1 or not flag_like:
            raise DataError(f"{where}: expected a (num_tokens,) array of bool (or 0/1), got {v.dtype} {v.shape}")
        out.valid[name] = v.astype(bool)
    if only:
        keep = parse_subset(only, list(out))
        for k in [k for k in out if k not in keep]:
            del out[k]
            out.valid.pop(k, None)
    return out


class Predictor:
    def __init__(
        self, specs: list[ModalitySpec], tasks: dict[str, int], class_names: dict[str, list[str]], run,
        extractor: dict | None = None,
    ) -> None:  # fmt: skip
        self.specs, self.tasks, self.class_names, self._run = specs, tasks, class_names, run
        self.extractor = extractor or {}  # {"reader", "encoder", "feature_set", "kinds"}: how its features were made

    def predict(self, sample: dict[str, np.ndarray], topk: int = 5, source: str = "sample") -> dict:
        if topk < 1:
            raise DataError(f"topk={topk}; ask for at least 1 class")
        tokens, present = tokens_from_mapping(self.specs, sample, source)
        mask, coverage = token_mask(self.specs, present, getattr(sample, "valid", {}), source)
        logits = self._run(tokens, mask)
        out = {"present": [s.name for s, p in zip(self.specs, present[0]) if p],
               "absent": [s.name for s, p in zip(self.specs, present[0]) if not p], "topk": {}}  # fmt: skip
        if coverage:
            out["token_coverage"] = coverage  # modalities present for part of the clip: the share of tokens
        for task in self.tasks:
            probs = torch.softmax(torch.as_tensor(logits[task][0]), -1)
            k = min(topk, len(probs))
            vals, idx = probs.topk(k)
            names = self.class_names.get(task) or []
            out["topk"][task] = [
                (int(i), names[int(i)] if int(i) < len(names) else str(int(i)), float(v)) for v, i in zip(vals, idx)
            ]
        return out


def token_mask(specs: list[ModalitySpec], present: torch.Tensor, valid: dict, source: str) -> tuple[torch.Tensor, dict]:
    """``present`` (1, M) with ``valid`` ``{modality: (num_tokens,) bool}`` (which tokens hold data)
    -> the mask (per token when a modality is present for part of the clip) and each such
    modality's share of present tokens."""
    if not valid:
        return present, {}
    rows, coverage = [], {}
    for m, s in enumerate(specs):
        row = torch.full((s.num_tokens,), bool(present[0, m]))
        if s.name in valid and bool(present[0, m]):
            v = torch.as_tensor(np.asarray(valid[s.name], dtype=bool))
            if v.shape != (s.num_tokens,) or not v.any():
                raise DataError(f"{source}: modality {s.name!r} marks {tuple(v.shape)} tokens valid "
                                f"(none present?); it has {s.num_tokens}")  # fmt: skip
            row = v
            if not v.all():
                coverage[s.name] = float(v.float().mean())
        rows.append(row)
    mask = torch.cat(rows)[None]
    return (mask if coverage else present), coverage


def load_predictor(path: str | Path) -> Predictor:
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        from karmma.deploy.export import onnx_feed, onnx_metadata

        meta = onnx_metadata(path)
        specs = [ModalitySpec(**d) for d in meta["specs"]]
        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's InvalidGraph / Fail
            raise DataError(f"{path}: onnxruntime cannot load it ({e}); export the model again") from e
        tasks = meta["tasks"]

        def run(tokens, present):
            return dict(zip(tasks, sess.run(list(tasks), onnx_feed([s.name for s in specs], tokens, present, meta))))

        return Predictor(specs, tasks, meta.get("class_names", {}), run, meta.get("extractor"))
    model, meta = load_model(path)
    model.eval()

    def run_torch(tokens, present):
        with torch.no_grad():
            return model(tokens, present)

    return Predictor(model.specs, model.tasks, meta.get("class_names", {}), run_torch, meta.get("extractor"))


def parse_only(only: str | None, predictor: Predictor) -> tuple[str, ...]:
    names = [s.name for s in predictor.specs]
    return tuple(parse_subset(only, names)) if only else tuple(names)


MEDIA_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".wav", ".mka", ".m4a", ".mp3",
                  ".aac", ".flac", ".ogg", ".opus", ".jpg", ".jpeg", ".png")  # fmt: skip


def not_a_clip(path: str | Path) -> None:
    """Refuse a raw clip (a video, audio or image file, a folder of frames) given as ``--input``."""
    path = Path(path)
    if path.suffix.lower() in MEDIA_SUFFIXES or path.is_dir():
        raise DataError(f"--input {path} is a raw clip (video, audio or frames), not a features file: "
                        f"pass it with --clip {path} to run the model's own extractors on it")  # fmt: skip


def clip_sample(predictor: Predictor, clip: str | Path, modalities: tuple[str, ...]):
    """A raw clip -> ``{modality: (num_tokens, dim)}`` with the model's own extractors (its store's
    clip format and encoder family, at the size of its feature set): a :class:`~karmma.data.raw.Raw`
    whose ``absent`` says why each asked modality the clip lacks is missing (no audio track, no
    video stream, ...). A clip with none of the asked modalities is refused, naming what it has."""
    from karmma.data.clips import CLIP_FORMATS, VIDEO_MODALITIES
    from karmma.data.media.decode import NoStream, TooFewFrames, clip_streams
    from karmma.data.raw import Kind, Raw, drop_failed
    from karmma.extractors.encoders import encode, token_valid, whole_clip_tokens
    from karmma.paths import no_dangling_link
    from karmma.registries import EXTRACTORS

    ex = predictor.extractor
    if not ex.get("reader"):
        raise DataError("this model records no extractor (trained on a store from an older karmma or another tool); "
                        "extract the clip's features yourself and pass them with --input")  # fmt: skip
    clip = no_dangling_link(clip, "--clip")
    if not clip.exists():
        raise DataError(f"clip {clip} does not exist")
    if ex.get("kinds") and ex["reader"] in CLIP_FORMATS:  # the spec saved with the model: no reader imported
        kinds_of = {m: Kind(*v) for m, v in ex["kinds"].items()}
        decode = CLIP_FORMATS[ex["reader"]]
    else:  # a model from karmma 0.1 (no spec saved), or a plugin's reader: the reader itself says
        from karmma.data.readers.base import reader_class

        reader = reader_class(ex["reader"])
        kinds_of, decode = dict(reader.modalities), reader.read_clip
    if ex["encoder"] not in EXTRACTORS:
        raise DataError(
            f"this model's features were made by the extractor family {ex['encoder']!r}, which is not "
            f"installed (registered: {EXTRACTORS.names()}); extract the clip's features and pass --input"
        )
    try:
        raw = decode(clip, modalities)
    except (NoStream, TooFewFrames) as e:  # none of the asked streams is in the clip
        raw = Raw()
        raw.absent.update(dict.fromkeys(modalities, e.what))
    size = ex.get("feature_set", "teacher")
    raw.absent.update(drop_failed(raw, modalities))
    kinds = {m: kinds_of[m] for m in modalities if m in raw}
    encoders = EXTRACTORS.get(ex["encoder"])(kinds, size, ex.get("weights"))  # the same family as extraction
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
