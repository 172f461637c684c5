"""cvae.config: a config dataclass as command-line options and back (nested configs included)."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from cvae.config import add_config_arguments, at_least, config_from_arguments
from cvae.model import ModelConfig
from cvae.training.config import TrainConfig


def parser_for(config_class: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test", exit_on_error=False)
    add_config_arguments(parser, config_class)
    return parser


def parse(argv: list[str]) -> TrainConfig:
    return config_from_arguments(TrainConfig, vars(parser_for(TrainConfig).parse_args(argv)))


def test_options_build_the_training_config_with_its_nested_model_config():
    cfg = parse(["--latent-dim", "4", "--no-film", "--spacing", "2", "2", "4", "--lr", "0.001"])
    assert isinstance(cfg.model, ModelConfig)
    assert cfg.model == dataclasses.replace(ModelConfig(), latent_dim=4, film=False)
    assert cfg.spacing == (2.0, 2.0, 4.0) and all(type(s) is float for s in cfg.spacing)
    assert cfg.lr == 0.001
    assert cfg == dataclasses.replace(TrainConfig(), spacing=(2.0, 2.0, 4.0), lr=0.001, model=cfg.model)
    assert parse([]) == TrainConfig()  # no option: every default, the model's included


def test_tuples_booleans_and_optional_strings():
    cfg = parse(["--encoder-channels", "8", "8", "8", "4", "--decoder-channels", "8", "4", "4", "--image-size", "64",
                 "64", "16", "--no-augment", "--init", "synthetic-acdc", "--kl-delay", "7"])
    assert cfg.model.encoder_channels == (8, 8, 8, 4) and cfg.model.decoder_channels == (8, 4, 4)
    assert cfg.model.image_size == (64, 64, 16) and all(type(n) is int for n in cfg.model.image_size)
    assert cfg.augment is False and cfg.init == "synthetic-acdc" and cfg.kl_delay == 7
    assert parse(["--film"]).model.film is True
    with pytest.raises(argparse.ArgumentError, match="expected 3 arguments"):  # a fixed-length tuple: that many
        parse(["--spacing", "2", "2"])
    with pytest.raises(argparse.ArgumentError, match="invalid float value"):
        parse(["--lr", "fast"])


def test_every_field_of_both_configs_is_one_option():
    parser = parser_for(TrainConfig)
    destinations = {a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"}
    fields |= {f.name for f in dataclasses.fields(ModelConfig)}
    assert destinations == fields
    assert "--no-film" in parser._option_string_actions and "--no-augment" in parser._option_string_actions


def test_a_parsed_model_config_is_its_own_copy():
    first, second = parse([]), parse([])
    assert first.model == second.model and first.model is not second.model
    assert TrainConfig().model is not TrainConfig().model


def test_at_least_names_the_option_of_the_first_field_out_of_range():
    @dataclasses.dataclass
    class Settings:
        batch_size: int = 1
        time_limit_min: float = 0.0

    at_least(Settings(), 0, "batch_size", "time_limit_min")
    at_least(Settings(batch_size=1), 1, "batch_size")  # the minimum itself is allowed
    with pytest.raises(ValueError, match=r"^--batch-size must be >= 1, got 0$"):
        at_least(Settings(batch_size=0, time_limit_min=-1.0), 1, "batch_size", "time_limit_min")
    with pytest.raises(ValueError, match=r"^--time-limit-min must be >= 0, got -0.5$"):
        at_least(Settings(time_limit_min=-0.5), 0, "batch_size", "time_limit_min")
    with pytest.raises(ValueError, match=r"^--time-limit-min must be >= 0.5, got nan$"):  # NaN is no number
        at_least(Settings(time_limit_min=float("nan")), 0.5, "time_limit_min")


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--time-limit-min", "-1"], "--time-limit-min must be >= 0"),
    (["--val-subjects", "-1"], "--val-subjects must be >= 0"),
    (["--weight-decay", "nan"], "--weight-decay must be >= 0, got nan"),
    (["--seg-weight", "-2"], "--seg-weight must be >= 0"),
    (["--n-steps", "0"], "--n-steps must be >= 1"),
    (["--integration-downsample", "0"], "--integration-downsample must be >= 1"),
    (["--kernel-smooth", "8"], "--kernel-smooth an odd number >= 1"),
    (["--sigma-lcc", "0"], "--sigma-lcc must be > 0"),
    (["--encoder-channels", "8", "0", "8", "4"], "every channel count and stride must be >= 1"),
    (["--spacing", "2", "-2", "4"], "--spacing must be three voxel sizes > 0 mm"),
])
def test_settings_out_of_range_are_refused_when_the_config_is_built(argv, message):
    with pytest.raises(ValueError) as info:
        parse(argv)
    assert message in str(info.value) and "\n" not in str(info.value)
