"""Every registry of karmma, and the built-in entries, registered lazily by where they live.

Naming or listing an entry imports nothing; :meth:`Registry.get` imports the one module that
holds it. This module imports only :mod:`karmma.registry`, so that configs can check names
without importing the models, tasks or readers (no import cycle), and a deployment imports only
what it uses. Add your own entry with the decorator (``@FUSION.register("name")``) in your own
file, or from an installed plugin package (:mod:`karmma.plugins`).
"""

from __future__ import annotations

from karmma.registry import Registry

FUSION = Registry("fusion block")
MISSING = Registry("missing-modality strategy")
ENCODERS = Registry("modality encoder")
ADDONS = Registry("model add-on")
TASKS = Registry("training task")
READERS = Registry("dataset reader")
EXTRACTORS = Registry("extractor family")

_BUILT_IN = {
    FUSION: {"transformer": "karmma.models.fusion:Fusion"},
    MISSING: {
        "token": "karmma.models.missing:LearnedTokens",
        "zero": "karmma.models.missing:ZeroFill",
        "attn_mask": "karmma.models.missing:AttentionMask",
        "reconstruct": "karmma.models.reconstruct:Reconstruct",
    },
    ENCODERS: {
        "identity": "karmma.models.encoders:IdentityEncoder",
        "temporal_conv": "karmma.models.encoders:TemporalConvEncoder",
        "efficientnet_lite0": "karmma.models.encoders:FineTunedBackbone",
        "motion_map_cnn": "karmma.models.motion_maps:MotionMapCNN",
    },
    ADDONS: {"late_fusion": "karmma.models.late_fusion:LateFusion"},
    TASKS: {
        "classification": "karmma.tasks.classification:ClassificationTask",
        "logit_kd": "karmma.tasks.distillation:LogitDistillationTask",
        "feature_kd": "karmma.tasks.feature_distillation:FeatureDistillationTask",
    },
    READERS: {
        "utd_mhad": "karmma.data.readers.utd_mhad:UTDMHADReader",
        "epic100": "karmma.data.readers.epic_media:EpicReader",
        "ssv2": "karmma.data.readers.ssv2_media:SSv2Reader",
        "video": "karmma.data.readers.video_folder:VideoFolderReader",
    },
    EXTRACTORS: {
        "pool": "karmma.extractors.families:pool_family",
        "efficientnet": "karmma.extractors.families:efficientnet_family",
        "cnn": "karmma.extractors.families:cnn_family",
        "motion_maps": "karmma.extractors.families:motion_maps_family",
    },
}
for _registry, _entries in _BUILT_IN.items():
    for _name, _target in _entries.items():
        _registry.register_lazy(_name, _target)

__all__ = ["ADDONS", "ENCODERS", "EXTRACTORS", "FUSION", "MISSING", "READERS", "TASKS"]
