"""A predictor loaded once: ``predict(sample)`` from token features, ``predict_clip(clip)`` from a
raw clip, ``stream(...)`` over live or recorded sensors (:mod:`karmma.runtime.stream`).

:func:`load` takes an export folder (``karmma export --pipeline``: runs on onnxruntime, numpy, PyAV
and OpenCV, without PyTorch), an ``.onnx`` file (the fusion only: raw clips need PyTorch for the
encoders) or a checkpoint / run folder (PyTorch)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from karmma.data.sample import sample_tokens, softmax, token_mask, top_k
from karmma.errors import DataError
from karmma.modalities import ModalitySpec, parse_subset
from karmma.runtime.backends import PIPELINE_FILE, PIPELINE_FORMAT, EncodersOf, Fusion


class Predictor:
    """``specs``/``tasks``/``class_names``: the model's; ``fusion``: tokens and presence -> logits;
    ``extractor``: how its training features were made (``reader``: the clip format, ``encoder``:
    the extractor family, ``feature_set``: teacher or student size, ``kinds``); ``encoders_of``:
    the frozen encoders of that family (None: raw clips cannot be read)."""

    def __init__(
        self, specs: list[ModalitySpec], tasks: dict[str, int], class_names: dict[str, list[str]], fusion: Fusion,
        extractor: dict | None = None, encoders_of: EncodersOf | None = None, backend: str = "torch",
    ) -> None:  # fmt: skip
        self.specs, self.tasks, self.class_names, self.fusion = specs, tasks, class_names, fusion
        self.extractor = extractor or {}
        self.encoders_of = encoders_of
        self.backend = backend  # "onnxruntime" or "torch"
        self._encoders: dict[tuple, dict[str, Any]] = {}

    @property
    def modality_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def predict(self, sample: Mapping[str, np.ndarray], topk: int = 5, source: str = "sample") -> dict:
        """``sample``: ``{modality: (num_tokens, dim)}`` of the modalities at hand (``sample.valid``,
        if any: ``{modality: (num_tokens,) bool}``, the tokens that hold data). -> ``present``,
        ``absent``, ``topk`` per task ([(id, name, probability)]), and ``token_coverage`` for a
        modality present for part of the clip."""
        if topk < 1:
            raise DataError(f"topk={topk}; ask for at least 1 class")
        tokens, present = sample_tokens(self.specs, sample, source)
        mask, coverage = token_mask(self.specs, present, getattr(sample, "valid", {}), source)
        return self.result(self.fusion(tokens, mask), present[0], coverage, topk)

    def result(self, logits: Mapping[str, np.ndarray], present: np.ndarray, coverage: dict, topk: int) -> dict:
        names = [s.name for s in self.specs]
        out: dict[str, Any] = {"present": [n for n, p in zip(names, present) if p],
                               "absent": [n for n, p in zip(names, present) if not p], "topk": {}}  # fmt: skip
        if coverage:
            out["token_coverage"] = coverage  # modalities present for part of the clip: the share of tokens
        for task in self.tasks:
            out["topk"][task] = top_k(softmax(logits[task][0]), topk, self.class_names.get(task) or [])
        return out

    def encoders(self, kinds: Mapping[str, Any]) -> dict[str, Any]:
        """The frozen encoders of ``kinds`` (built once per set of modalities)."""
        if self.encoders_of is None or not self.extractor.get("reader"):
            raise DataError("this model records no extractor (trained on a store from an older karmma or another "
                            "tool); extract the clip's features yourself and pass them with --input")  # fmt: skip
        key = tuple(sorted(kinds))
        if key not in self._encoders:
            self._encoders[key] = self.encoders_of(kinds, self.extractor.get("feature_set", "teacher"))
        return self._encoders[key]

    def predict_clip(self, clip: str | Path, modalities: tuple[str, ...] | None = None, topk: int = 5) -> dict:
        """A raw clip (a video with or without audio, an audio file, a folder of frames) through the
        model's own extractors; ``absent_reasons`` says why each missing modality is missing."""
        from karmma.runtime.clip import clip_sample

        sample = clip_sample(self, clip, modalities or tuple(self.modality_names))
        out = self.predict(sample, topk=topk, source=str(clip))
        if sample.absent:
            out["absent_reasons"] = dict(sample.absent)
        return out

    def stream(self, sources: list, hop: float = 0.5, window: float | None = None, **kwargs: Any):
        """Predictions every ``hop`` seconds over the last ``window`` seconds of ``sources``: a
        :class:`karmma.runtime.stream.Streamer`, iterated for one dict per hop (its ``errors``
        say which sources stopped and why)."""
        from karmma.runtime.stream import Streamer

        return Streamer(self, sources, hop=hop, window=window, **kwargs)

    def parse_only(self, only: str | None) -> tuple[str, ...]:
        return tuple(parse_subset(only, self.modality_names)) if only else tuple(self.modality_names)


def load(path: str | Path) -> Predictor:
    """Load a predictor: an export folder (no PyTorch), an ``.onnx`` file, or a checkpoint / run folder."""
    from karmma.paths import no_dangling_link

    path = no_dangling_link(path, "model")
    if not path.exists():
        raise DataError(f"model {path} does not exist: give an export folder (karmma export --pipeline), an .onnx "
                        "file or a run folder")  # fmt: skip
    if path.is_dir() and (path / PIPELINE_FILE).is_file():
        return load_pipeline(path)
    if path.suffix == ".onnx":
        from karmma.runtime.backends import ort_fusion, torch_encoders

        fusion, meta = ort_fusion(path)
        specs = [ModalitySpec(**d) for d in meta["specs"]]
        ex = meta.get("extractor") or {}
        enc = (lambda kinds, size: torch_encoders(ex)(kinds, size)) if ex.get("encoder") else None
        return Predictor(specs, meta["tasks"], meta.get("class_names", {}), fusion, ex, enc, "onnxruntime")
    try:
        from karmma.io.checkpoint import load_model
    except ImportError as e:  # a torch-free install given a run folder
        raise DataError(f"{path} is a run folder or checkpoint, which needs PyTorch ({e}); on a robot without it, "
                        "run an export folder (karmma export RUN --pipeline --out DIR)") from e  # fmt: skip
    from karmma.runtime.backends import torch_encoders, torch_fusion

    model, meta = load_model(path)
    model.eval()
    ex = meta.get("extractor") or {}
    enc = torch_encoders(ex) if ex.get("encoder") else None
    return Predictor(model.specs, model.tasks, meta.get("class_names", {}), torch_fusion(model), ex, enc, "torch")


def load_pipeline(folder: Path) -> Predictor:
    """An export folder: ``pipeline.json``, the fusion and the frozen backbones as ONNX graphs."""
    from karmma.limits import ANNOTATION_BYTES
    from karmma.runtime.backends import ort_encoders, ort_fusion

    spec_path = folder / PIPELINE_FILE
    ANNOTATION_BYTES.check(spec_path.stat().st_size, str(spec_path))
    try:
        spec = json.loads(spec_path.read_text())
        if spec.get("format") != PIPELINE_FORMAT:
            raise KeyError("format")
        fusion_file = folder / Path(spec["fusion"]).name  # files inside the folder only
        for b in spec.get("backbones", {}).values():
            b["file"] = Path(b["file"]).name
            int(b["resolution"])
        ex = spec["extractor"]
        if not isinstance(ex, dict) or not {"reader", "encoder", "kinds"} <= set(ex):
            raise KeyError("extractor (reader, encoder, kinds)")
        if spec["backbones"] and not set(spec["backbone_of"].values()) <= set(spec["backbones"]):
            raise KeyError("backbone_of")
        if not isinstance(spec["preprocessing"].get("frame_size"), list):
            raise KeyError("preprocessing.frame_size")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{spec_path}: not a karmma pipeline spec ({e}); export it again with "
                        "`karmma export MODEL --pipeline --out DIR`") from e  # fmt: skip
    fusion, meta = ort_fusion(fusion_file)
    specs = [ModalitySpec(**d) for d in meta["specs"]]
    ex = spec["extractor"]
    pred = Predictor(
        specs, meta["tasks"], meta.get("class_names", {}), fusion, ex, ort_encoders(folder, spec), "onnxruntime"
    )
    pred.spec = spec  # type: ignore[attr-defined]
    return pred
