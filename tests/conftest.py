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
        **kw,
    )
    return cfg.validate()


def random_batch(specs, b, present=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randn(b, s.num_tokens, s.dim, generator=g) for s in specs]
    if present is None:
        present = torch.ones(b, len(specs), dtype=torch.bool)
    return tokens, present
