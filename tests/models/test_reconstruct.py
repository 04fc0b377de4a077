"""The reconstruction baseline (``model.missing: reconstruct``): absent slots predicted from the
present ones, trained with its loss on modalities dropped but held by the data, and shipped like
every other strategy (saved, reloaded, exported to ONNX, verified)."""

import json

import torch

from karmma.data.dataset import Batch
from karmma.deploy.export import export_onnx, verify_onnx
from karmma.engine.runs import run_train
from karmma.io.checkpoint import load_model
from karmma.models import KARMMA
from karmma.models.reconstruct import Reconstruct
from karmma.tasks.classification import ClassificationTask
from tests.conftest import random_batch, tiny_experiment, tiny_model_cfg


def _model(specs, tasks):
    torch.manual_seed(0)
    return KARMMA(specs, tasks, tiny_model_cfg(missing="reconstruct"))


def test_absent_slots_are_predicted_from_the_present_modalities_only(specs, tasks):
    model = _model(specs, tasks).eval()
    assert isinstance(model.missing, Reconstruct) and model.missing is model.embed.missing
    tokens, _ = random_batch(specs, 3)
    present = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 0, 1]], dtype=torch.bool)
    recon = lambda toks: (model(toks, present), model.missing._last[0])  # noqa: E731
    _, base = recon(tokens)
    flow = slice(specs[0].num_tokens, specs[0].num_tokens + specs[1].num_tokens)
    changed = [tokens[0] + 1.0, tokens[1], tokens[2]]  # a present modality moves the prediction
    assert not torch.allclose(recon(changed)[1][:, flow], base[:, flow])
    garbage = [tokens[0], torch.randn_like(tokens[1]) * 50, tokens[2]]  # the absent one cannot
    assert torch.equal(recon(garbage)[1], base)
    # a modality present for part of the clip lends its present tokens to its absent ones
    per_token = torch.ones(3, sum(s.num_tokens for s in specs), dtype=torch.bool)
    per_token[:, 2:4] = False  # rgb's last two tokens fail
    _, with_own = recon(tokens)
    model(tokens, per_token)
    assert model.missing._last[1][:, 2:4].sum() == 0 and model.missing._last[1][:, :2].all()
    assert with_own.shape == base.shape


def test_nothing_present_stays_finite(specs, tasks):
    model = _model(specs, tasks).eval()
    tokens, _ = random_batch(specs, 2)
    out = model(tokens, torch.zeros(2, 3, dtype=torch.bool))
    assert all(torch.isfinite(v).all() for v in out.values())


def _batch(specs, tasks, b=6):
    tokens, present = random_batch(specs, b, seed=4)
    labels = {t: torch.randint(0, n, (b,), generator=torch.Generator().manual_seed(1)) for t, n in tasks.items()}
    return Batch([str(i) for i in range(b)], tokens, present, labels, torch.arange(b))


def test_the_loss_is_on_slots_dropped_but_held_and_trains_the_predictor(specs, tasks):
    model = _model(specs, tasks).train()
    task = ClassificationTask(model)
    batch = _batch(specs, tasks)
    whole = task(batch, batch.present)  # nothing dropped: nothing to reconstruct
    assert whole["recon"] == 0.0
    dropped = batch.present.clone()
    dropped[:, 1] = False  # modality dropout removed flow, which the data holds
    out = task(batch, dropped)
    assert out["recon"] > 0.0
    model.zero_grad()
    out["loss"].backward()
    assert model.missing.queries.grad.abs().sum() > 0
    # the same step on a sample whose flow the data lacks: no target, no loss
    batch.present[:, 1] = False
    assert task(batch, dropped)["recon"] == 0.0
    # the target is the projection of the real tokens, without gradient (no collapse): flow's
    # projection gets none from this step
    batch.present[:, 1] = True
    model.zero_grad()
    task(batch, dropped)["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.embed.proj[1].parameters())


def test_trained_saved_reloaded_and_exported(tmp_path):
    cfg = tiny_experiment(epochs=6)
    cfg.model.missing = "reconstruct"
    run_train(cfg.validate(), tmp_path / "r")
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    recon = [row["recon"] for row in history]
    assert recon[-1] < recon[0] and recon[-1] < 1.0, recon  # better than at first, and than predicting zeros
    model, meta = load_model(tmp_path / "r")
    assert isinstance(model.missing, Reconstruct) and meta["model"]["missing"] == "reconstruct"
    report = verify_onnx(model, export_onnx(model, meta, tmp_path / "r.onnx"))
    assert report["ok"], report


def test_without_its_loss_the_predictor_still_trains_through_the_task(specs, tasks, monkeypatch):
    monkeypatch.setattr(Reconstruct, "weight", 0.0)
    model = _model(specs, tasks).train()
    batch = _batch(specs, tasks)
    dropped = batch.present.clone()
    dropped[:, 0] = False
    ClassificationTask(model)(batch, dropped)["loss"].backward()
    assert model.missing.queries.grad.abs().sum() > 0


def test_the_strategy_comparison_command_reports_every_strategy(tmp_path, capsys):
    from karmma.cli.main import main

    small = ["data.synthetic.num_train=96", "data.synthetic.num_val=32", "data.synthetic.num_test=48",
             "optim.epochs=1", "optim.batch_size=32"]  # fmt: skip
    argv = ["missing-strategies", "--data", "demo", "--out", str(tmp_path / "m"), "--seeds", "0,1", "--lanes", "1",
            "--strategies", "token,reconstruct", "--repeats", "1", "--no-progress"]  # fmt: skip
    assert main([*argv, *(a for s in small for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "| token | reconstruct |" in out and "mean over sensor-dropout rates" in out
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["split"] == "test" and set(summary["summary"]["models"]) == {"token", "reconstruct"}
    assert len(summary["summary"]["means"]["token"]["subsets"]["values"]) == 2  # one per seed
    model, meta = load_model(tmp_path / "m" / "seed1" / "reconstruct")
    assert meta["model"]["missing"] == "reconstruct" and isinstance(model.missing, Reconstruct)
    assert main(["missing-strategies", "--out", str(tmp_path / "x"), "--strategies", "token,nope"]) == 2
    assert "nope" in capsys.readouterr().err
