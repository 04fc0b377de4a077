"""The training engine: the one loop (:func:`karmma.engine.train.fit`), distillation, modality
dropout, the augmentation pipeline, post-training steps, runs from a config."""
