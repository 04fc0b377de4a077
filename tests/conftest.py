import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

from karmma.config import DataConfig, ExperimentConfig, ModelConfig, OptimConfig, SyntheticConfig  # noqa: E402
from karmma.data.synthetic import generate  # noqa: E402
from karmma.modalities import ModalitySpec  # noqa: E402

TINY_SYNTH = SyntheticConfig(num_train=96, num_val=48, num_verbs=3, num_nouns=4, absent_rate=0.2, seed=1)


@pytest.fixture(scope="session")
def tiny_data():
    return generate(TINY_SYNTH)


@pytest.fixture
def specs():
    return [ModalitySpec("rgb", 4, 6), ModalitySpec("flow", 3, 5), ModalitySpec("audio", 2, 4)]


@pytest.fixture
def tasks():
    return {"verb": 3, "noun": 4, "action": 5}


def tiny_model_cfg(**kw) -> ModelConfig:
    base = dict(dim=16, depth=1, attn_heads=2, head_hidden=16, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def tiny_experiment(feature_set="teacher", epochs=2, **kw) -> ExperimentConfig:
    cfg = ExperimentConfig(
        name="tiny",
        seed=3,
        data=DataConfig(kind="synthetic", feature_set=feature_set, synthetic=TINY_SYNTH),
        model=tiny_model_cfg(),
        optim=OptimConfig(epochs=epochs, batch_size=32, lr=3e-3, warmup_steps=2),
        **{"recipe": "paper", **kw},  # the engine's unit tests train the model as configured
    )
    return cfg.validate()


def random_batch(specs, b, present=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randn(b, s.num_tokens, s.dim, generator=g) for s in specs]
    if present is None:
        present = torch.ones(b, len(specs), dtype=torch.bool)
    return tokens, present


def preset_specs(pair: str):
    """The token shapes each shipped preset pair is trained on (teacher's, student's)."""
    if pair == "demo":
        from karmma.data.synthetic import specs as synth

        return synth("teacher"), synth("student"), {"verb": 8, "noun": 12, "action": 40}
    if pair == "utd_mhad":
        from karmma.data.readers.base import get_reader
        from karmma.extractors.extract import SIZES, backbone_encoder, encoder_specs

        reader = get_reader("utd_mhad")
        mods = tuple(reader.modalities)  # depth, flow, inertial, skeleton
        encoders = {size: {m: backbone_encoder(reader.modalities[m], size) for m in mods} for size in SIZES}
        sets = encoder_specs(encoders, mods)
        return sets["teacher"], sets["student"], {"action": 27}
    # EPIC-100 from community features: the same 1024-d TBN features for both (fusion-only cost).
    epic = [ModalitySpec(m, 8, 1024) for m in ("rgb", "flow", "audio")]
    return epic, epic, {"verb": 97, "noun": 300, "action": 3806}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Train and validation stores written by the library (:func:`tests.hostile.synthetic_store`)."""
    from tests.hostile import synthetic_store

    d = tmp_path_factory.mktemp("stores")
    return synthetic_store(d / "train.h5", "train"), synthetic_store(d / "val.h5", "val")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, stores):
    """``karmma train --config demo_teacher`` (one quick epoch) on :func:`stores`."""
    from karmma.cli import main
    from tests.hostile import QUICK, store_args

    run = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", "--config", "demo_teacher", "--run-dir", str(run), *QUICK, *store_args(*stores)]) == 0
    return run
