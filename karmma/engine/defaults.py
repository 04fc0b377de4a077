"""Safe defaults for data no recipe was tuned on (``recipe: safe``, the default).

A fusion model trained on a small real data set can score *below its best single sensor* with
every sensor present: it memorises its training clips through the easiest modality and the others
pull it down (measured on a folder of 780 real clips, and on UTD-MHAD before its recipe). The
UTD-MHAD recipe fixed it with unimodal heads trained beside the fusion and late-fused with it,
with weights fitted on the validation split. ``recipe: safe`` gives every run that does not choose
its add-ons that remedy, where a validation split exists to fit it on:

* ``model.addons: {late_fusion: {loss_weight: 1, ensemble: 2, pool: mixture, weights: per_subset}}``
  — a unimodal head per modality (an auxiliary cross-entropy makes each encoder recognise on its
  own), pooled with the fusion's output as a mixture of probabilities (a confidently wrong weak
  sensor cannot veto), a row of weights per modality subset fitted on the validation split after
  training (:mod:`karmma.models.late_fusion`, :mod:`karmma.engine.fusion_weights`); where the
  fused output loses to a head on validation, the fitted weights lean on the head;
* in distillation, ``distill.unimodal: true``: each student head learns from the teacher's
  prediction with its modality alone.

Resolved where the run is built (:func:`resolve`), and saved so in the run's config: a resumed run
and its model.json hold what was trained. A config that names its add-ons keeps them, and
``recipe: paper`` keeps the config exactly as written: the paper's model where it names none.
"""

from __future__ import annotations

import dataclasses
import logging

from karmma.config import ExperimentConfig

log = logging.getLogger(__name__)

SAFE_LATE_FUSION = {"loss_weight": 1.0, "ensemble": 2.0, "pool": "mixture", "weights": "per_subset"}


def resolve(cfg: ExperimentConfig, has_val: bool, stage: str = "train") -> ExperimentConfig:
    """``cfg`` as the run trains it: with ``recipe: safe``, no add-on chosen and a validation
    split, the late-fusion add-on (and, for ``stage="distill"``, unimodal distillation)."""
    if cfg.recipe != "safe" or cfg.model.addons:
        return cfg
    if not has_val:
        log.warning("%s: recipe safe fits its late fusion on a validation split and this run has none, so it trains "
                    "the paper's plain model; give data.val (a store) or data.val_fraction (e.g. 0.15) for a fusion "
                    "that does not lose to its best sensor, or set recipe=paper to silence this", cfg.name)  # fmt: skip
        return cfg
    log.info("%s: recipe safe — unimodal heads late-fused with the fusion, weights fitted on the validation split "
             "(model.addons.late_fusion %s); set recipe=paper for the paper's plain model", cfg.name,
             SAFE_LATE_FUSION)  # fmt: skip
    model = cfg.model.with_addons({"late_fusion": dict(SAFE_LATE_FUSION)})
    distill = dataclasses.replace(cfg.distill, unimodal=True) if stage == "distill" else cfg.distill
    return dataclasses.replace(cfg, model=model, distill=distill)
