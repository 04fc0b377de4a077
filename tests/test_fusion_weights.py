"""``model.addons.late_fusion.weights: validation | per_subset``: the late fusion's weights, fitted on the
validation split after training (karmma/engine/fusion_weights.py), carried by checkpoints, evaluation and
ONNX export."""

import json

import numpy as np
import pytest
import torch

from karmma.config import load_config
from karmma.data.dataset import FeatureSet
from karmma.engine.fusion_weights import fit_fusion_weights, fusion_weight_names, per_subset_weight_names
from karmma.engine.runs import run_train
from karmma.engine.train import build_model, fit
from karmma.errors import ConfigError, DataError
from karmma.io.checkpoint import load_model
from karmma.modalities import ModalitySpec, subset_index
from karmma.models import KARMMA
from karmma.models.late_fusion import LateFusion, late_fusion, late_fusion_of
from karmma.models.output import ModelOutput
from karmma.presets import preset_path
from karmma.tasks import ClassificationTask
from tests.conftest import random_batch, tiny_experiment, tiny_model_cfg
from tests.hostile import cli

WEIGHTS = "addons.late_fusion.weights"  # the state-dict key of the fitted table


def _late(**options) -> dict:
    return {"late_fusion": {"loss_weight": 1.0, "ensemble": 2.0, **options}}


def _model(specs, tasks, **options):
    return KARMMA(specs, tasks, tiny_model_cfg(addons=_late(**options), dropout=0.2))


def _outputs_with_a_random_table(model, specs):
    """Six samples (three lack the first modality, one has it alone) through ``model`` with a random
    table of fusion weights: (present, table, late-fused output, fused logits, unimodal logits)."""
    tokens, present = random_batch(specs, 6)
    present[:3, 0] = False
    present[5, 1:] = False  # the first modality alone
    weights = late_fusion_of(model).weights
    table = torch.rand(weights.shape) * 3 + 0.1
    weights.copy_(table)
    out = model(tokens, present)
    experts = out.extras["late_fusion"]
    return tokens, present, table, out, experts["fused"], experts["heads"]


def _with_experts(model, experts):
    """``model`` whose forward gives the late fusion the experts ``experts(tokens, present)``."""

    def forward(tokens, present, **kw):
        fused, heads = experts(tokens, present)
        out = ModelOutput(fused, torch.zeros(0), [])
        out.extras["late_fusion"] = {"fused": fused, "heads": heads}
        return out

    model.forward = forward
    return model


def test_weighted_late_fusion_is_the_normalised_pool_of_the_present_experts(specs, tasks):
    """Output = (a log softmax(fused) + sum over present m of b_m log softmax(head_m)) / (a + sum b_m),
    (a, b) the row of the sample's own modality subset; an absent modality's weight has no effect;
    before fitting every row is (1, w, .., w)."""
    model = _model(specs, tasks, weights="per_subset").eval()
    weights = late_fusion_of(model).weights
    assert weights.tolist() == [[1.0, 2.0, 2.0, 2.0]] * 7  # one row per subset of 3
    tokens, present, table, out, fused, uni = _outputs_with_a_random_table(model, specs)
    assert subset_index(present).tolist() == [5, 5, 5, 6, 6, 0]  # bits: modality m adds 2^m
    for t in tasks:
        for b in range(6):
            keep, w = present[b], table[int(subset_index(present[b : b + 1]))]
            num = w[0] * fused[t][b].log_softmax(-1) + (w[1:][keep, None] * uni[t][b][keep].log_softmax(-1)).sum(0)
            assert torch.allclose(out[t][b], num / (w[0] + w[1:][keep].sum()), atol=1e-5)
    weights[:, 1] = 100.0
    after = model(tokens, present)
    assert torch.allclose(after["verb"][:3], out["verb"][:3], atol=1e-6)  # absent there
    assert not torch.allclose(after["verb"][3:], out["verb"][3:])
    equal = _model(specs, tasks).eval()
    assert late_fusion_of(equal).weights is None
    equal.load_state_dict({k: v for k, v in model.state_dict().items() if k != WEIGHTS})
    weights.copy_(torch.tensor([1.0, 2.0, 2.0, 2.0]).expand(7, 4))
    one = torch.zeros_like(present)
    one[:, 2] = True  # one modality present: the starting weights give the equal rule exactly
    assert all(torch.allclose(model(tokens, one)[t], equal(tokens, one)[t], atol=1e-5) for t in tasks)


def test_the_mixture_pool_is_exact_and_a_confidently_wrong_sensor_cannot_veto(specs, tasks):
    """``pool: mixture``: (a log softmax(fused) + c log(sum_present b_m softmax(head_m) / sum_present b_m))
    / (a + c), row (a, c, b) of the sample's subset; with one sensor present the same as the product."""
    model = _model(specs, tasks, weights="per_subset", pool="mixture").eval()
    assert late_fusion_of(model).weights.tolist() == [[1.0, 2.0, 1.0, 1.0, 1.0]] * 7
    tokens, present, table, out, fused, uni = _outputs_with_a_random_table(model, specs)
    for t in tasks:
        for b in range(6):
            keep, w = present[b], table[int(subset_index(present[b : b + 1]))]
            shares = w[2:][keep, None]
            mix = (shares * uni[t][b][keep].softmax(-1)).sum(0) / shares.sum()
            assert torch.allclose(out[t][b], (w[0] * fused[t][b].log_softmax(-1) + w[1] * mix.log()) / (w[0] + w[1]),
                                  atol=1e-5)  # fmt: skip
    one = torch.zeros_like(present)
    one[:, 1] = True
    product = _model(specs, tasks).eval()
    product.load_state_dict({k: v for k, v in model.state_dict().items() if k != WEIGHTS})
    equal = _model(specs, tasks, pool="mixture").eval()  # equal shares: no buffer, the same rule
    assert late_fusion_of(equal).weights is None
    equal.load_state_dict({k: v for k, v in model.state_dict().items() if k != WEIGHTS})
    late_fusion_of(model).weights.copy_(torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0]).expand(7, 5))
    for t in tasks:
        assert torch.allclose(model(tokens, one)[t], product(tokens, one)[t], atol=1e-5)
        assert torch.allclose(model(tokens, present)[t], equal(tokens, present)[t], atol=1e-5)
    # Two sensors agree on class 0 (p = 0.9); a third is sure of class 1 (p(class 0) = 1e-6).
    agree = torch.tensor([0.9, 0.05, 0.05]).log()
    veto = torch.tensor([1e-6, 1 - 2e-6, 1e-6]).log()
    heads = {"verb": torch.stack([agree, agree, veto])[None]}
    flat = {"verb": torch.zeros(1, 3)}
    all3 = torch.ones(1, 3, dtype=torch.bool)
    assert late_fusion(flat, heads, all3, 2.0)["verb"].argmax().item() == 1  # the product: vetoed
    assert late_fusion(flat, heads, all3, 2.0, pool="mixture")["verb"].argmax().item() == 0


def _sensors(n: int, seed: int, noise: float = 0.5) -> FeatureSet:
    """Two sensors: ``good`` carries the label (one-hot, plus noise), ``bad`` is noise."""
    g = np.random.default_rng(seed)
    labels = g.integers(0, 4, n)
    good = np.eye(4, dtype=np.float32)[labels][:, None] * 3 + g.normal(0, noise, (n, 1, 4)).astype(np.float32)
    specs = [ModalitySpec("good", 1, 4), ModalitySpec("bad", 1, 4)]
    features = {"good": good, "bad": g.normal(0, 3, (n, 1, 4)).astype(np.float32)}
    ids = [f"c{i}" for i in range(n)]
    return FeatureSet(specs, features, np.ones((n, 2), bool), {"action": labels}, ids, {"action": 4})


def test_the_fit_gives_a_sensor_that_carries_nothing_a_small_weight():
    """The experts here are fixed functions of the inputs (no training): the fused output and the
    ``bad`` head are noise, the ``good`` head reads the label off its sensor."""
    data = _sensors(200, 0)
    model = KARMMA(data.specs, data.tasks, tiny_model_cfg(addons=_late(weights="validation")))

    def experts(tokens, present):
        good, bad = tokens
        return {"action": bad[:, 0].flip(-1)}, {"action": torch.stack([good[:, 0], bad[:, 0]], 1)}

    _with_experts(model, experts)
    table = late_fusion_of(model).weights
    weights = fit_fusion_weights(model, data)
    named = fusion_weight_names(model, weights)
    assert torch.equal(table, weights.expand(3, 3)) and list(named) == ["fused", "good", "bad"]
    assert named["good"] > 1.0 and named["bad"] < 0.1 and named["fused"] < 0.1, named
    assert model.training  # the mode it was in (a fresh module trains)
    unlabelled = _sensors(8, 1)
    unlabelled.labelled, unlabelled.labels["action"][:] = False, -1
    with pytest.raises(DataError, match="no labels to fit the late-fusion weights"):
        fit_fusion_weights(model, unlabelled)
    assert torch.equal(table, weights.expand(3, 3))  # untouched


def test_per_subset_rows_fit_what_each_subset_needs_and_draw_toward_the_shared_row():
    """The fused expert here reads the label where ``good`` is absent and points one class off
    where it is present: one shared row must compromise, a row per subset need not."""
    data = _sensors(300, 2, noise=2.0)

    def experts(tokens, present):
        good, bad = tokens
        fused = torch.where(present[:, :1], good[:, 0].roll(1, -1), good[:, 0])
        return {"action": fused}, {"action": torch.stack([good[:, 0], bad[:, 0]], 1)}

    tokens, y = [torch.from_numpy(data.features[n]) for n in ("good", "bad")], torch.from_numpy(data.labels["action"])
    scores, rows = {}, {}
    for mode in ("validation", "per_subset"):
        model = _with_experts(KARMMA(data.specs, data.tasks, tiny_model_cfg(addons=_late(weights=mode))), experts)
        shared = fit_fusion_weights(model, data)
        rows[mode] = per_subset_weight_names(model)
        for subset in ([True, False], [False, True], [True, True]):
            mask = torch.tensor([subset]).expand(len(data), 2)
            fused, uni = experts(tokens, mask)
            w = late_fusion_of(model).weights[subset_index(mask)]
            pool = w[:, :1] * fused["action"].log_softmax(-1) + (
                w[:, 1:, None] * mask[..., None] * uni["action"].log_softmax(-1)
            ).sum(1)
            scores[mode, tuple(subset)] = (torch.nn.functional.cross_entropy(pool, y).item(),
                                           (pool.argmax(-1) == y).float().mean().item())  # fmt: skip
    one, per = rows["validation"], rows["per_subset"]
    assert list(per) == ["good", "bad", "good+bad"] and list(per["bad"]) == ["fused", "bad"]
    assert one["good"]["fused"] == one["bad"]["fused"] == shared[0].item()  # one row, shared
    assert per["bad"]["fused"] > 5 * per["good"]["fused"] and per["bad"]["fused"] > shared[0] > per["good"]["fused"]
    assert torch.allclose(late_fusion_of(model).weights[0, 2], shared[2])  # "bad" is absent from row "good": kept
    for subset in ([True, False], [False, True], [True, True]):
        assert scores["per_subset", tuple(subset)][0] < scores["validation", tuple(subset)][0] - 0.05, scores
    assert scores["per_subset", (True, True)][1] > scores["validation", (True, True)][1] + 0.03, scores


def test_training_fits_them_on_the_validation_split_and_every_tool_uses_them(tmp_path, capsys):
    sets = ["model.addons.late_fusion.loss_weight=1.0", "model.addons.late_fusion.ensemble=2.0",
            "model.addons.late_fusion.weights=per_subset", "model.addons.late_fusion.pool=mixture", "optim.epochs=2",
            "optim.warmup_steps=2", "data.synthetic.num_train=64", "data.synthetic.num_val=32"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    rc, out, err = cli(capsys, "train", "--config", "demo_teacher", *args, "--run-dir", tmp_path / "t", "--no-progress")
    assert rc == 0, err
    assert "late-fusion weights fitted on the validation split: fused " in out and " audio " in out
    model, meta = load_model(tmp_path / "t")
    saved = json.loads((tmp_path / "t" / "final" / "model.json").read_text())
    assert meta["fusion_weights"] == saved["fusion_weights"]
    assert meta["fusion_weights_per_subset"] == saved["fusion_weights_per_subset"] == per_subset_weight_names(model)
    table = late_fusion_of(model).weights
    assert list(res_names := fusion_weight_names(model, table[-1])) == [
        "fused",
        "heads",
        "rgb",
        "flow",
        "audio",
    ]
    assert set(saved["fusion_weights"]) == set(res_names)  # (model.json sorts its keys)
    assert len(saved["fusion_weights_per_subset"]) == 7
    assert list(per_subset_weight_names(model)["rgb+audio"]) == ["fused", "heads", "rgb", "audio"]
    assert len(set(map(tuple, table.tolist()))) == 7  # fitted, a row of its own per subset
    rc, _, err = cli(capsys, "export", tmp_path / "t", "--out", tmp_path / "t.onnx")
    assert rc == 0, err  # (export runs the ONNX model against PyTorch on every subset's mask)
    rc, _, err = cli(capsys, "distill", "--config", "demo_student", "--teacher", tmp_path / "t", *args,
                     "--run-dir", tmp_path / "s", "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert set(load_model(tmp_path / "s")[1]["fusion_weights"]) == {"fused", "heads", "rgb", "flow", "audio"}


def test_a_checkpoint_with_one_shared_row_loads_as_that_row_in_every_subset(tmp_path, capsys):
    """karmma before per-subset weights saved ``fusion_weights`` as one row ``(1 + M,)`` (this release
    keeps a table at ``addons.late_fusion.weights``; ``KARMMA.upgrade_state`` maps the old key)."""
    from safetensors.torch import load_file, save_file

    sets = ["model.addons.late_fusion.loss_weight=1.0", "model.addons.late_fusion.ensemble=2.0",
            "model.addons.late_fusion.weights=validation", "optim.epochs=1", "data.synthetic.num_train=32",
            "data.synthetic.num_val=16"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    rc, _, err = cli(capsys, "train", "--config", "demo_teacher", *args, "--run-dir", tmp_path / "t", "--no-progress")
    assert rc == 0, err
    path = tmp_path / "t" / "final" / "model.safetensors"
    state = load_file(str(path))
    row = state.pop(WEIGHTS)[-1].clone()
    save_file({**state, "fusion_weights": row}, str(path))
    model, _ = load_model(tmp_path / "t")
    assert torch.equal(late_fusion_of(model).weights, row.expand(7, 4))
    rc, _, err = cli(capsys, "export", tmp_path / "t", "--out", tmp_path / "t.onnx")  # the product pool's table
    assert rc == 0, err


def test_without_a_validation_split_it_stops_before_training_and_says_how(tmp_path):
    cfg = tiny_experiment()
    cfg.model = tiny_model_cfg(addons=_late(weights="validation"))
    cfg.validate()
    from karmma.data.sources import load_split

    train = load_split(cfg.data, "train")
    with pytest.raises(ConfigError, match="has none: give data.val") as err:
        fit(ClassificationTask(build_model(cfg, train)), train, cfg, tmp_path / "run")
    assert "model.addons.late_fusion.weights=equal" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
    run_train(tiny_experiment(), tmp_path / "plain")  # equal shares: nothing fitted, nothing recorded
    assert "fusion_weights" not in load_model(tmp_path / "plain")[1]


def test_the_config_names_the_choices_and_what_it_needs(specs, tasks):
    learned = "model.addons.late_fusion: weights='learned'; choose 'equal', 'validation' or 'per_subset'"
    with pytest.raises(ConfigError, match=learned):  # where the model is built
        KARMMA(specs, tasks, tiny_model_cfg(addons=_late(weights="learned")))
    with pytest.raises(ConfigError, match="model.addons.late_fusion: weights=validation weighs .*; set ensemble > 0"):
        LateFusion.parse({"loss_weight": 1.0, "weights": "validation"}, "late_fusion")
    for who in ("teacher", "student"):  # docs/results/utd_mhad.md: chosen on the four validation folds
        late = load_config(preset_path(f"utd_mhad_{who}")).model.addons["late_fusion"]
        assert (late["weights"], late["pool"]) == ("per_subset", "mixture")
    assert "late_fusion" not in load_config(preset_path("demo_teacher")).model.addons  # nothing fitted
    with pytest.raises(ConfigError, match="model.addons.late_fusion: pool='sum'; choose 'product' or 'mixture'"):
        LateFusion.parse({"pool": "sum"}, "late_fusion")


def test_the_fit_reads_fewer_samples_where_their_log_probabilities_would_not_fit_in_memory():
    from types import SimpleNamespace

    from karmma.engine.fusion_weights import sample_budget

    epic = SimpleNamespace(specs=[None] * 3, tasks={"verb": 97, "noun": 300, "action": 3806})
    assert sample_budget(epic) == 256 * 2**20 // (7 * 4 * 4203 * 4) == 570
    utd = SimpleNamespace(specs=[None] * 4, tasks={"action": 27})
    assert sample_budget(utd) == 2048  # the whole 108-clip validation subject, and then some
