"""Typed dataclass configs, loaded strictly from YAML (``yaml.safe_load``: no code is ever run).

Unknown keys and wrong types raise :class:`ConfigError` naming the file, the key and the fix.
Values the paper does not state are marked ``# paper-unknown default`` and listed in
``docs/paper_to_code.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from karmma.config_migration import migrate_experiment, migrate_model
from karmma.errors import ConfigError
from karmma.registries import ADDONS, ENCODERS, FUSION, MISSING, TASKS
from karmma.typed_dict import typed_from_dict

log = logging.getLogger(__name__)

DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DROPOUT_KINDS = ("none", "independent", "subset", "burst")


@dataclass
class ModelConfig:
    """Fusion model: [per-modality encoders] -> embedding -> [CLS] + fusion -> multi-head MLP."""

    dim: int = 256  # paper-unknown default: fusion width
    depth: int = 4  # paper-unknown default: fusion depth (transformer blocks)
    attn_heads: int = 8  # paper-unknown default: attention heads of the fusion block
    mlp_ratio: float = 4.0  # paper-unknown default
    dropout: float = 0.1  # paper-unknown default: dropout inside the fusion block
    head_hidden: int = 256  # paper-unknown default: hidden width of each classifier MLP head
    # How a missing modality is represented (karmma.models.missing.MISSING): "token" is KARMMA's
    # (learned modality + position tokens fill its slots); baselines: "zero" (zero-filled features),
    # "attn_mask" (slots masked out of attention), "reconstruct" (predicted from the present ones).
    missing: str = "token"
    # Which readers' head outputs are averaged: "all" ([CLS] + every modality mean, as in the
    # paper) or "present" ([CLS] + present modalities only).
    head_average: str = "all"  # paper-unknown default
    fusion: str = "transformer"  # a block of karmma.models.fusion.FUSION
    # Per-modality encoders (karmma.models.encoders.ENCODERS), e.g. {inertial: temporal_conv};
    # a modality not named here uses "identity" (the stored tokens as they are).
    encoders: dict[str, str] = field(default_factory=dict)
    encoder_width: int = 0  # width of trainable encoders (0: the fusion width, model.dim)
    encoder_layers: int = 2
    encoder_tokens: int = 0  # tokens a trainable encoder pools its modality to (0: keep them all)
    image_encoder_width: int = 16  # paper-unknown default: first-block channels of image encoders (motion_map_cnn)
    # Add-ons beyond the paper, by registered name (karmma.registries.ADDONS), each with its own
    # options, parsed by the add-on where the model is built — e.g. the UTD-MHAD recipe's
    # {late_fusion: {loss_weight: 1.0, ensemble: 2.0, pool: mixture, weights: per_subset}}
    # (karmma/models/late_fusion.py). Empty: the paper's model.
    addons: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        check_model_names(self)
        if self.head_average not in ("all", "present"):
            raise ConfigError(f"model.head_average={self.head_average!r}; choose 'all' or 'present'")
        if self.attn_heads < 1:
            raise ConfigError(f"model.attn_heads={self.attn_heads} must be >= 1 (attention heads of the fusion block)")
        if self.dim % self.attn_heads:
            raise ConfigError(f"model.dim={self.dim} must be divisible by model.attn_heads={self.attn_heads}")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ConfigError(f"model.mlp_ratio={self.mlp_ratio} must be a finite number > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        sizes, encoder = (self.dim, self.depth, self.head_hidden), (self.encoder_width, self.encoder_layers)
        if min(sizes) < 1 or min(*encoder, self.encoder_tokens) < 0:
            raise ConfigError("model.dim, depth, head_hidden must be >= 1; encoder_width, _layers, _tokens >= 0")

    def with_addons(self, addons: dict[str, dict[str, Any]]) -> ModelConfig:
        """This config with ``model.addons`` as the add-ons resolved them (every option spelled out)."""
        return dataclasses.replace(self, addons=addons)

    @classmethod
    def teacher(cls) -> ModelConfig:
        return cls(dim=256, depth=4, attn_heads=8, head_hidden=256)

    @classmethod
    def student(cls) -> ModelConfig:  # a compact fusion: half the width, well under 50% of the teacher's FLOPs
        return cls(dim=128, depth=4, attn_heads=4, head_hidden=128)


@dataclass
class AugmentConfig:
    """Train-time augmentation (beyond the paper; all off by default): built by the training engine
    (:mod:`karmma.engine.augment`), never part of a saved or exported model."""

    time_warp: float = 0.0  # random speed 1 +- w and shift of each sample's standardised tokens
    input_noise: float = 0.0  # Gaussian noise std on the standardised tokens
    # Random rotation of a modality's raw values read as consecutive 3-vectors (skeleton joints,
    # accelerometer/gyroscope axes): max angle in radians about x, y and z, e.g.
    # {skeleton: [0, 1.0, 0]} turns the body about the vertical axis. Applied before standardising.
    rotate: dict[str, list[float]] = field(default_factory=dict)
    # Modality swap, e.g. {depth: 0.5}: with that probability a sample's encoded depth tokens are
    # another sample's (label kept), only where the sample has another modality present, so the
    # fusion learns to cross-check a weak modality (ModalitySwap).
    swap: dict[str, float] = field(default_factory=dict)
    swap_min_present: int = 2  # swap only in samples with at least this many modalities present

    def validate(self) -> None:
        if not (0.0 <= self.time_warp < 1.0 and 0.0 <= self.input_noise):
            raise ConfigError("augment.time_warp must be in [0, 1) and augment.input_noise >= 0")
        for name, angles in self.rotate.items():
            if len(angles) != 3 or not all(math.isfinite(a) and 0.0 <= a <= math.pi for a in angles):
                raise ConfigError(
                    f"augment.rotate.{name}={angles}: give three max angles in radians (about x, y, z), each in [0, pi]"
                )
        for name, q in self.swap.items():
            if not 0.0 <= q <= 1.0:
                raise ConfigError(f"augment.swap.{name}={q} must be a probability in [0, 1]")
        if self.swap_min_present < 1:
            raise ConfigError(
                f"augment.swap_min_present={self.swap_min_present} must be >= 1 (2: never a lone modality)"
            )


@dataclass
class ModalityDropoutConfig:
    """Modality dropout in training, keeping >= 1 token; ``burst``: ``p``, then bursts (karmma.bursts)."""

    kind: str = "independent"  # "none" | "independent" | "subset" | "burst"
    p: float = 0.5  # paper-unknown default: per-modality drop probability ("independent", "burst")
    burst_rate: float = 0.3  # "burst": mean fraction of a clip each sensor is failed
    burst_rate_max: float = 0.0  # "burst", if above burst_rate: each clip's rate uniform in [burst_rate, this]
    burst_share: float = 1.0  # "burst": the share of clips given bursts (the others: whole-modality dropout only)
    burst_seconds: float = 0.5  # "burst": mean length of a failure, seconds
    clip_seconds: float = 3.0  # "burst": a clip's length where the store records none

    def validate(self) -> None:
        if self.kind not in DROPOUT_KINDS:
            raise ConfigError(f"modality_dropout.kind={self.kind!r}; choose one of {DROPOUT_KINDS}")
        bounds = {"p": (0.0, 1.0), "burst_rate": (0.0, 0.99), "burst_seconds": (1e-3, 3600.0),
                  "clip_seconds": (1e-3, 3600.0), "burst_rate_max": (0.0, 0.99), "burst_share": (0.0, 1.0)}  # fmt: skip
        for name, (lo, hi) in bounds.items():
            if not lo <= getattr(self, name) <= hi:  # also refuses NaN
                raise ConfigError(f"modality_dropout.{name}={getattr(self, name)} must be in [{lo:g}, {hi:g}]")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (the paper does not name its optimizer)."""

    epochs: int = 20  # paper-unknown default
    batch_size: int = 64  # paper-unknown default
    lr: float = 3e-4  # paper-unknown default
    weight_decay: float = 0.05  # paper-unknown default
    warmup_steps: int = 50  # paper-unknown default
    grad_clip: float = 1.0  # paper-unknown default
    label_smoothing: float = 0.0
    # Which weights the run keeps as its model: "last" (the final epoch's) or "best" (the epoch
    # with the best validation accuracy — early stopping, chosen on the validation split).
    select: str = "last"
    patience: int = 0  # with a validation split: stop after this many epochs without improvement (0: never)

    def validate(self) -> None:
        if self.select not in ("last", "best"):
            raise ConfigError(f"optim.select={self.select!r}; choose 'last' or 'best' (best validation accuracy)")
        if self.patience < 0:
            raise ConfigError(f"optim.patience={self.patience} must be >= 0 (0: never stop early)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("optim.epochs and optim.batch_size must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"optim.lr={self.lr} must be a finite number > 0")
        for key, value in (("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"optim.{key}={value} must be a finite number >= 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"optim.label_smoothing={self.label_smoothing} must be in [0, 1)")


@dataclass
class DistillConfig:
    """Stage 2: alpha * CE + (1 - alpha) * T^2 * KL(teacher || student), per head."""

    alpha: float = 0.5  # paper-unknown default
    temperature: float = 4.0  # paper-unknown default
    cache_teacher_logits: bool = False  # cache the frozen teacher's logits for every subset
    cache_memory_mb: float = 1024.0  # in memory (float32) up to this; beyond, float16 in the run folder
    task: str = "logit_kd"  # the objective (karmma.tasks.TASKS): logit_kd (the paper's) or feature_kd
    # Whose logits on the training samples: "teacher" (the given teacher's, as in the paper) or
    # "out_of_fold" (teachers retrained without each fold, by data.group_pattern; karmma.engine.out_of_fold).
    teacher_logits: str = "teacher"
    folds: int = 3  # out_of_fold only
    beta: float = 1.0  # feature_kd only: weight of the feature-matching term (beyond the paper)
    # also distil each unimodal head (late_fusion add-on; beyond the paper) from the teacher with its modality alone
    unimodal: bool = False
    # Options of the objective distill.task names, parsed by that task where it is built (a
    # registered KD objective's own settings, e.g. {scale: 0.5}); the built-in tasks take none.
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.task not in TASKS or self.task == "classification":
            raise ConfigError(f"distill.task={self.task!r}; choose a distillation task: logit_kd, feature_kd, ...")
        if self.teacher_logits not in ("teacher", "out_of_fold"):
            raise ConfigError(f"distill.teacher_logits={self.teacher_logits!r}; choose 'teacher' or 'out_of_fold'")
        if self.teacher_logits == "out_of_fold" and (self.folds < 2 or not self.cache_teacher_logits):
            raise ConfigError(
                "distill.teacher_logits=out_of_fold needs distill.folds >= 2 and cache_teacher_logits=true"
            )
        if not self.cache_memory_mb >= 0:
            raise ConfigError(f"distill.cache_memory_mb={self.cache_memory_mb} must be >= 0 (0: always on disk)")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"distill.beta={self.beta} must be a finite number >= 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha={self.alpha} must be in [0, 1]")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"distill.temperature={self.temperature} must be a finite number > 0")


@dataclass
class SyntheticConfig:
    """The embedded default dataset (see :mod:`karmma.data.synthetic`)."""

    num_train: int = 3000
    num_val: int = 1000
    num_test: int = 1000  # the test split: read only for the final report
    num_verbs: int = 8
    num_nouns: int = 12
    absent_rate: float = 0.1  # fraction of training samples with one genuinely absent modality
    student_noise: float = 1.05  # the student's (small) extractor noise, relative to the teacher's
    label_noise: float = 0.0  # fraction of training labels replaced by a random action (annotation noise)
    seed: int = 0


@dataclass
class DataConfig:
    """Where features come from: the embedded synthetic generator or feature stores (HDF5)."""

    kind: str = "synthetic"  # "synthetic" | "store"
    train: str | None = None  # feature store of the training split (kind=store)
    val: str | None = None  # feature store of the validation split (kind=store)
    test: str | None = None  # feature store of the test split: read only for the final report
    # Without data.val: hold out this fraction of the training store as the validation split, by
    # whole groups (karmma.data.splits) named in the sample ids by group_pattern's first group.
    val_fraction: float = 0.0
    group_pattern: str = ""  # e.g. "^(P\\d+)_" (EPIC-100 participants); empty: each sample alone
    feature_set: str = "teacher"  # which extractor's features to read ("teacher" | "student")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    num_workers: int = 0  # DataLoader worker processes reading training batches ahead (0: in the loop)
    # Chunk-aware shuffling (karmma.data.order): permute storage chunks, then samples within windows
    # of this many chunks, so that reads from disk stay sequential (0: a uniform permutation).
    shuffle_chunks: int = 16

    def validate(self) -> None:
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in [0, 1)")
        try:
            re.compile(self.group_pattern)
        except re.error as e:
            raise ConfigError(f"data.group_pattern={self.group_pattern!r} is not a regular expression ({e})") from None
        if self.shuffle_chunks < 0:
            raise ConfigError(f"data.shuffle_chunks={self.shuffle_chunks} must be >= 0 (0: a uniform permutation)")
        if self.kind not in ("synthetic", "store"):
            raise ConfigError(f"data.kind={self.kind!r}; choose 'synthetic' or 'store'")
        if self.kind == "store" and not self.train:
            raise ConfigError("data.kind=store needs data.train: the path of a feature store (.h5)")


@dataclass
class ExperimentConfig:
    """Everything one ``karmma train`` / ``karmma distill`` run needs."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    modality_dropout: ModalityDropoutConfig = field(default_factory=ModalityDropoutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    device: str = "auto"  # "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    checkpoint_epochs: int = 1  # checkpoint at the end of every N-th epoch (and always of the last)
    keep_checkpoints: int = 2
    precision: str = "fp32"  # "bf16": bfloat16 autocast for the forward pass (karmma.precision; a GPU option)
    compile: bool = False  # torch.compile the model's forward (karmma.precision)
    recipe: str = "safe"  # "safe": defaults for new data (karmma.engine.defaults); "paper": the config as written

    def validate(self) -> ExperimentConfig:
        for part in (self.data, self.model, self.augment, self.modality_dropout, self.optim, self.distill):
            part.validate()
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1 or self.checkpoint_epochs < 1:
            raise ConfigError("checkpoint_every must be >= 0, checkpoint_epochs and keep_checkpoints >= 1")
        if not DEVICE_RE.fullmatch(self.device):
            raise ConfigError(f"device={self.device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        if self.precision not in ("fp32", "bf16") or self.recipe not in ("safe", "paper"):
            raise ConfigError(f"precision={self.precision!r}, recipe={self.recipe!r}: choose fp32|bf16, safe|paper")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- strict loading


# Renamed keys: old name -> new name, per config class. Old configs and checkpoints still load.
RENAMED: dict[type, dict[str, str]] = {ModelConfig: {"heads": "attn_heads"}}


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types; an experiment
    config written for karmma 0.1 (augmentation and late fusion as ``model.*`` keys) is read as
    its 0.2 layout, with a warning (:mod:`karmma.config_migration`)."""
    if cls is ExperimentConfig and isinstance(data, dict):
        data = migrate_experiment(data, where)
    return typed_from_dict(cls, data, where, RENAMED)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a YAML config (see configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); fix the syntax") from e
    if data is None:
        raise ConfigError(f"{path}: the file is empty; write the config keys (see `karmma presets` for examples)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def _validated(data: dict[str, Any], where: str) -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, data, where)
    try:
        return cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML, then apply ``key.sub=value`` overrides.

    Errors name the file (for its own keys) or ``--set KEY=VALUE`` (for an override's).
    """
    data = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    if not overrides:
        return _validated(data, where)
    from_dict(ExperimentConfig, copy.deepcopy(data), where)  # the file's own keys and types first
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node, parts = data, key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    try:
        return _validated(data, "config")
    except ConfigError as e:
        text = str(e).removeprefix("config: ").removeprefix("config.")
        blamed = [o for o in overrides if o.split("=", 1)[0].strip() in text] or overrides
        raise ConfigError(f"--set {' --set '.join(blamed)} (on {where}): {text}") from None


def model_config_from_json(data: dict[str, Any], where: str, version: int = 2) -> ModelConfig:
    """The model config of a ``model.json`` (or an ONNX file's metadata) of format ``version``:
    version 1 (karmma 0.1) held augmentation and late fusion as flat keys."""
    if version < 2 and isinstance(data, dict):
        data = migrate_model(data)[0]
    cfg = from_dict(ModelConfig, data, where)
    cfg.validate()
    return cfg


def check_model_names(cfg: ModelConfig) -> None:
    """``model.missing``, ``model.fusion``, ``model.encoders`` and ``model.addons`` name registered
    entries (built-in or from a plugin package); nothing is imported to check them."""
    for key, registry in (("missing", MISSING), ("fusion", FUSION)):
        name = getattr(cfg, key)
        if name not in registry:
            raise ConfigError(f"model.{key}={name!r}; choose one of {registry.names()}")
    for key in ("encoders", "addons"):
        if not isinstance(getattr(cfg, key), dict):
            raise ConfigError(f"model.{key} must be a mapping, got {getattr(cfg, key)!r}")
    for modality, name in cfg.encoders.items():
        if name not in ENCODERS:
            raise ConfigError(f"model.encoders.{modality}={name!r}: not registered; choose one of {ENCODERS.names()}")
    for name in cfg.addons:
        if name not in ADDONS:
            raise ConfigError(f"model.addons.{name}: not registered; choose one of {ADDONS.names()}")
