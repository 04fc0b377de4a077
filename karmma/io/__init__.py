"""Run folders and files: safetensors + JSON checkpoints, run locks and fingerprints, atomic outputs."""
