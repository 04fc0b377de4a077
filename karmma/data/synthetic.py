"""The embedded default dataset: synthetic multimodal token features with EPIC-like structure.

Each sample is an action = a (verb, noun) pair drawn from a fixed list of valid pairs. Three
modalities observe a shared latent through their own random "extractor" projections:

* ``rgb``   sees the noun well and the verb poorly (appearance),
* ``flow``  sees the verb well and the noun poorly (motion),
* ``audio`` sees both, weakly and with more noise,

so the modalities are complementary and each alone is weaker than all together. Two feature sets
are generated from the same latent: ``teacher`` (wide, cleaner: a large extractor) and
``student`` (narrow, noisier: a small extractor). A fraction of training samples has one
modality genuinely absent. Everything is a pure function of the seed.
"""

from __future__ import annotations

import numpy as np

from karmma.config import SyntheticConfig
from karmma.data.dataset import FeatureSet
from karmma.modalities import ModalitySpec

# name, num_tokens, (teacher dim, student dim), verb weight, noun weight, noise (teacher)
_MODALITIES = [
    ("rgb", 8, (64, 32), 0.35, 1.0, 1.0),
    ("flow", 8, (48, 24), 1.0, 0.3, 1.0),
    ("audio", 4, (32, 16), 0.6, 0.6, 1.3),
]
_LATENT = 16


def specs(feature_set: str = "teacher") -> list[ModalitySpec]:
    j = 0 if feature_set == "teacher" else 1
    return [ModalitySpec(name, n, dims[j]) for name, n, dims, *_ in _MODALITIES]


def _action_pairs(cfg: SyntheticConfig, rng: np.random.Generator) -> list[tuple[int, int]]:
    # Every verb and every noun appears; about 40% of all pairs are valid actions (as in EPIC, most
    # verb-noun combinations never occur).
    pairs = {(v, int(rng.integers(cfg.num_nouns))) for v in range(cfg.num_verbs)}
    pairs |= {(int(rng.integers(cfg.num_verbs)), n) for n in range(cfg.num_nouns)}
    target = max(len(pairs), int(0.4 * cfg.num_verbs * cfg.num_nouns))
    while len(pairs) < target:
        pairs.add((int(rng.integers(cfg.num_verbs)), int(rng.integers(cfg.num_nouns))))
    return sorted(pairs)


def generate(cfg: SyntheticConfig | None = None) -> dict[str, dict[str, FeatureSet]]:
    """``{"train": {"teacher": FeatureSet, "student": FeatureSet}, "val": {...}}``."""
    cfg = cfg or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    pairs = _action_pairs(cfg, rng)
    tasks = {"verb": cfg.num_verbs, "noun": cfg.num_nouns, "action": len(pairs)}
    class_names = {
        "verb": [f"verb{v}" for v in range(cfg.num_verbs)],
        "noun": [f"noun{n}" for n in range(cfg.num_nouns)],
        "action": [f"verb{v} noun{n}" for v, n in pairs],
    }
    # Class prototypes: per modality, a (num_tokens, latent) pattern per verb and per noun.
    protos = {}
    for name, n_tok, dims, *_ in _MODALITIES:
        protos[name] = (
            rng.normal(size=(cfg.num_verbs, n_tok, _LATENT)),
            rng.normal(size=(cfg.num_nouns, n_tok, _LATENT)),
            {fs: rng.normal(size=(_LATENT, d)) / np.sqrt(_LATENT) for fs, d in zip(("teacher", "student"), dims)},
        )
    out: dict[str, dict[str, FeatureSet]] = {}
    for split, n in (("train", cfg.num_train), ("val", cfg.num_val), ("test", cfg.num_test)):
        action = rng.integers(len(pairs), size=n)
        true_action = action
        if split == "train" and cfg.label_noise > 0:  # annotation noise: the features follow the true action
            flip = rng.random(n) < cfg.label_noise
            action = np.where(flip, rng.integers(len(pairs), size=n), action)
        present = np.ones((n, len(_MODALITIES)), dtype=bool)
        if split == "train" and cfg.absent_rate > 0:
            rows = np.flatnonzero(rng.random(n) < cfg.absent_rate)
            present[rows, rng.integers(len(_MODALITIES), size=len(rows))] = False
        true_verb = np.array([pairs[a][0] for a in true_action])
        true_noun = np.array([pairs[a][1] for a in true_action])
        verb = np.array([pairs[a][0] for a in action])
        noun = np.array([pairs[a][1] for a in action])
        sets: dict[str, dict[str, np.ndarray]] = {"teacher": {}, "student": {}}
        for m, (name, n_tok, _, wv, wn, noise) in enumerate(_MODALITIES):
            pv, pn, proj = protos[name]
            # Per-sample nuisance: a random gain and a latent noise shared by both extractors.
            gain = rng.uniform(0.7, 1.3, size=(n, 1, 1))
            latent = gain * (wv * pv[true_verb] + wn * pn[true_noun]) + 0.5 * rng.normal(size=(n, n_tok, _LATENT))
            for fs in ("teacher", "student"):
                scale = noise * (cfg.student_noise if fs == "student" else 1.0)
                x = latent @ proj[fs] + scale * rng.normal(size=(n, n_tok, proj[fs].shape[1]))
                x[~present[:, m]] = 0.0
                sets[fs][name] = x.astype(np.float32)
        ids = [f"{split}_{i:05d}" for i in range(n)]
        out[split] = {
            fs: FeatureSet(
                specs=specs(fs),
                features=sets[fs],
                present=present,
                labels={"verb": verb, "noun": noun, "action": action},
                ids=ids,
                tasks=tasks,
                class_names=class_names,
                source=f"<synthetic {split}/{fs} seed={cfg.seed}>",
            )
            for fs in ("teacher", "student")
        }
    return out
