"""Typed training configs: YAML + dotted overrides, coercion, unknown keys, resolved-config round trip."""

from __future__ import annotations

import pytest

from tft2v.config import Config, apply_overrides, config_from_dict, dump_config, load_config, to_dict
from tft2v.errors import ConfigError


def test_defaults_and_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nrecipe: {coherence_weight: 0.0}\ndata: {ratio: [2, 1]}\n")
    cfg = load_config(path)
    assert cfg.seed == 3 and cfg.recipe.coherence_weight == 0.0 and cfg.data.ratio == (2, 1)
    assert cfg.optim == Config().optim  # untouched sections keep their defaults


def test_overrides_coerce_types():
    cfg = load_config(None, ["optim.lr=1e-4", "data.ratio=[1,0]", "train.max_steps=7", "recipe.text_free_videos=false",
                             "recipe.conditions=[sketch, masked]", "model.unet.model_channels=16", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.ratio == (1, 0) and cfg.train.max_steps == 7 and cfg.recipe.text_free_videos is False
    assert cfg.recipe.conditions == ("sketch", "masked") and cfg.model.unet == {"model_channels": 16}
    assert cfg.optim.betas == (0.8, 0.9)


def test_mixed_precision_no_is_accelerates_spelling_not_false(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")  # YAML 1.1 reads an unquoted no as False
    assert load_config(path).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(path, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    with pytest.raises(ConfigError, match="data.kind must be a string, got False"):
        load_config(None, ["data.kind=no"])  # other keys keep YAML's reading


@pytest.mark.parametrize("override, key", [
    ("recipe.coherence_wieght=0.2", "recipe.coherence_wieght"),
    ("nonsense=1", "nonsense"),
    ("schedule.bogus=1", "schedule.bogus"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("override, words", [
    ("train.max_steps=abc", "train.max_steps must be an integer"),
    ("recipe.text_free_videos=maybe", "recipe.text_free_videos must be true or false"),
    ("data.ratio=[1,2,3]", "data.ratio must have 2 items"),
    ("data.kind=lmdb", "data.kind must be one of"),
    ("data.worker_start=thread", "data.worker_start must be one of"),
    ("recipe.text_dropout=1.5", "recipe.text_dropout must be in"),
    ("schedule.prediction_type=x0", "prediction_type must be one of"),
    ("model.init=sd21", "needs model.init_path"),
    ("recipe.trainable=condition_encoders", "needs recipe.conditions"),
    ("optim.lr", "must look like key=value"),
    ("recipe.video_high_noise_share=2", "recipe.video_high_noise_share must be in"),
    ("recipe.video_high_noise_start=1000", "video_high_noise_start must be < schedule.num_train_timesteps"),
])
def test_bad_values_are_one_line_config_errors(override, words):
    with pytest.raises(ConfigError, match=words) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["seed=5", "recipe.conditions=[depth]", "train.validation_prompts=[a red circle]"])
    text = dump_config(cfg, tmp_path / "resolved.yaml")
    assert (tmp_path / "resolved.yaml").read_text() == text
    import yaml

    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg and to_dict(again) == to_dict(cfg)


def test_overrides_do_not_mutate_input():
    data = {"optim": {"lr": 1.0}}
    out = apply_overrides(data, ["optim.lr=2.0"])
    assert data == {"optim": {"lr": 1.0}} and out == {"optim": {"lr": 2.0}}


def test_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.seed = 1  # type: ignore[misc]
