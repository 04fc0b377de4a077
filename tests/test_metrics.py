import math

import torch

from karmma.metrics import AccuracyMeter, topk_accuracy


def test_topk():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    y = torch.tensor([2, 0])
    assert topk_accuracy(logits, y, 1) == 50.0
    assert topk_accuracy(logits, y, 2) == 100.0
    assert topk_accuracy(logits, y, 5) == 100.0  # k capped at the class count


def test_meter_empty_and_half_batches():
    m = AccuracyMeter(["verb"])
    m.update({"verb": torch.zeros(0, 3)}, {"verb": torch.zeros(0, dtype=torch.long)})
    assert math.isnan(m.compute()["verb_top1"])
    m.update({"verb": torch.tensor([[1.0, 0, 0]])}, {"verb": torch.tensor([0])})
    m.update({"verb": torch.tensor([[1.0, 0, 0]])}, {"verb": torch.tensor([1])})
    r = m.compute()
    assert r["verb_top1"] == 50.0 and r["count"] == 2
