"""Evaluation: every modality subset and sensor-dropout rate, metrics (EPIC included), cost, plots."""
