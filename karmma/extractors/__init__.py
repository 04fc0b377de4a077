"""Feature extraction: media decoding, optical flow and frozen per-modality encoders."""
