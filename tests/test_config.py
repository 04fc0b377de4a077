import pytest

from karmma.config import ExperimentConfig, load_config
from karmma.errors import ConfigError
from karmma.presets import list_presets, preset_path


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_config_parses(name):
    cfg = load_config(preset_path(name))
    assert isinstance(cfg, ExperimentConfig)


def test_presets_exist():
    assert {"demo_teacher", "demo_student", "epic100_teacher", "epic100_student"} <= set(list_presets())


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {epoks: 3}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*epoks"):
        load_config(p)


def test_wrong_type_is_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {epochs: three}\n")
    with pytest.raises(ConfigError, match="optim.epochs: expected int"):
        load_config(p)
    p.write_text("model: {dim: true}\n")
    with pytest.raises(ConfigError, match="boolean"):
        load_config(p)


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="missing"):
        load_config(None, ["model.missing=nothing"])
    with pytest.raises(ConfigError, match="alpha"):
        load_config(None, ["distill.alpha=1.5"])
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["model.dim=10", "model.heads=3"])


def test_overrides_and_int_to_float():
    cfg = load_config(None, ["optim.lr=1", "seed=5"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.seed == 5


def test_yaml_never_runs_code(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/x.yaml")


def test_old_heads_key_still_loads_with_a_deprecation_message(tmp_path, caplog):
    import json
    import logging

    from karmma.io.checkpoint import load_model, model_metadata, save_model
    from karmma.modalities import ModalitySpec
    from karmma.models import KARMMA

    p = tmp_path / "old.yaml"
    p.write_text("model: {dim: 32, heads: 4}\n")
    with caplog.at_level(logging.WARNING, logger="karmma.config"):
        cfg = load_config(p)
    assert cfg.model.attn_heads == 4 and "model.heads is deprecated: it is now" in caplog.text
    p.write_text("model: {dim: 32, heads: 4, attn_heads: 4}\n")
    with pytest.raises(ConfigError, match="both 'heads' and 'attn_heads'"):
        load_config(p)
    # A checkpoint written before the rename (model.json says "heads") loads.
    model = KARMMA([ModalitySpec("rgb", 2, 3)], {"action": 2}, cfg.model)
    folder = save_model(tmp_path / "m", model, model_metadata(model))
    meta = json.loads((folder / "model.json").read_text())
    meta["model"]["heads"] = meta["model"].pop("attn_heads")
    for key in ("fusion", "encoders", "encoder_width", "encoder_layers"):
        meta["model"].pop(key)
    (folder / "model.json").write_text(json.dumps(meta))
    assert load_model(folder)[0].cfg.attn_heads == 4
