"""training.cli: the trainers' command lines are made from their frozen config dataclasses, one flag per
field, each with its help, and parse back to exactly the config."""

import argparse
from dataclasses import FrozenInstanceError, dataclass, fields

import pytest

from training.cli import add_settings, help_of, setting, settings_from
from training.clip import train as clip_train
from training.distill import train as distill_train
from training.mask3d import train as mask3d_train


@dataclass(frozen=True)
class Example:
    names: tuple[str, ...] = setting((), "some names", nargs="+", required=True)
    size: tuple[int, int] = setting((3, 4), "height and width", nargs=2)
    rate: float = setting(0.5, "a rate")
    label: str = setting("x", "a label", flag="--tag")
    fast: bool = setting(False, "go fast")
    checks: bool = setting(True, "skip the checks")


def test_flags_types_switches_and_tuples():
    p = argparse.ArgumentParser()
    add_settings(p, Example)
    cfg = settings_from(Example, p.parse_args(["--names", "a", "b", "--size", "5", "6", "--rate", "2", "--tag", "y",
                                               "--fast", "--no-checks"]))
    assert cfg == Example(names=("a", "b"), size=(5, 6), rate=2.0, label="y", fast=True, checks=False)
    assert settings_from(Example, p.parse_args(["--names", "a"])) == Example(names=("a",))
    with pytest.raises(SystemExit):
        p.parse_args(["--names", "a", "--rate", "fast"])
    with pytest.raises(FrozenInstanceError):
        cfg.rate = 1.0
    assert help_of(Example, "label") == "a label"
    with pytest.raises(ValueError, match="help"):
        setting(1)


@pytest.mark.parametrize("module, argv", [
    (mask3d_train, ["--train", "a"]),
    (distill_train, ["--cache", "a", "--val-cache", "b", "--mask3d", "m.pt", "--out", "o", "--clip", "local-dir:c"]),
    (clip_train, ["--scenes", "a", "--val-scenes", "b"]),
])
def test_each_trainer_has_one_flag_with_help_per_config_field(module, argv):
    skip = ("clip", "clip_config") if module is distill_train else ()   # distill: an exclusive group of its own
    p = argparse.ArgumentParser()
    add_settings(p, module.TrainConfig, skip=skip)
    flags = {a.dest: a for a in p._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in fields(module.TrainConfig)} - set(skip)
    assert all(a.help for a in flags.values())
    cfg = module.parse_args(argv)
    assert isinstance(cfg, module.TrainConfig)
    with pytest.raises(FrozenInstanceError):
        cfg.seed = 1
