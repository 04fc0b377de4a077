"""Golden outputs: a tiny KARMMA per missing-modality strategy, loaded from stored weights, must
reproduce its stored outputs. Regenerate with ``python tests/golden/regenerate.py`` only when a
change to the model's arithmetic is intended."""

import pytest
import torch
from safetensors.torch import load_file

from tests.golden.regenerate import MISSING, PATH, SPECS, build, inputs


@pytest.fixture(scope="module")
def golden():
    return load_file(str(PATH))


def test_inputs_are_the_stored_ones(golden):
    tokens, present = inputs()
    for s, t in zip(SPECS, tokens):
        assert torch.equal(golden[f"input.{s.name}"], t)
    assert torch.equal(golden["input.present"], present)


@pytest.mark.parametrize("missing", MISSING)
def test_stored_weights_reproduce_stored_outputs(golden, missing):
    model = build(missing)
    prefix = f"{missing}.weights."
    state = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    assert set(state) == set(model.state_dict())  # parameter names are part of the format
    model.load_state_dict(state)
    tokens = [golden[f"input.{s.name}"] for s in SPECS]
    with torch.no_grad():
        out = model(tokens, golden["input.present"])
    for task, logits in out.items():
        torch.testing.assert_close(logits, golden[f"{missing}.output.{task}"], atol=1e-5, rtol=1e-5)


def test_the_strategies_differ(golden):
    # The three strategies are not silently the same computation.
    a, b, c = (golden[f"{m}.output.action"] for m in MISSING)
    assert a.abs().mean() > 0.1  # outputs of a size the tolerance can tell apart
    assert (a - b).abs().max() > 0.01 and (a - c).abs().max() > 0.01
    assert (a[0] - c[0]).abs().max() < 1e-5  # all present (same weights): token == attn_mask


def test_the_utd_recipe_inference_path_reproduces_its_stored_outputs():
    """The UTD-MHAD recipe's inference path (motion-map CNN, temporal encoders, late fusion with a
    mixture pool and per-subset weights): stored weights reproduce stored outputs on every subset."""
    from tests.golden.regenerate_recipe import PATH as RECIPE
    from tests.golden.regenerate_recipe import SPECS as RECIPE_SPECS
    from tests.golden.regenerate_recipe import build as build_recipe

    golden = load_file(str(RECIPE))
    model = build_recipe()
    state = {k.removeprefix("weights."): v for k, v in golden.items() if k.startswith("weights.")}
    assert set(state) == set(model.state_dict())  # parameter names are part of the format
    model.load_state_dict(state)
    tokens = [golden[f"input.{s.name}"] for s in RECIPE_SPECS]
    with torch.no_grad():
        out = model(tokens, golden["input.present"])
    torch.testing.assert_close(out["action"], golden["output.action"], atol=1e-5, rtol=1e-5)
    assert out.extras["late_fusion"]["heads"]["action"].shape == (15, 4, 5)  # the late fusion ran
