"""The strict config core: round trips, presets, overrides and the errors users see."""

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from a2p.config import from_dict, load_config, parse_override, save_config, to_dict
from a2p.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-4
    """Learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""


@dataclass
class Run:
    name: str = "run"
    """Run name."""
    steps: int = 10
    """Optimizer steps."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision."""
    vq: str | None = None
    """Optional path."""
    optim: Optim = field(default_factory=Optim)
    """Optimizer section."""


def test_round_trip_through_json(tmp_path):
    cfg = Run(name="x", steps=3, precision="bf16", vq="a.safetensors", optim=Optim(lr=0.5, betas=(0.1, 0.2)))
    path = tmp_path / "cfg.json"
    save_config(cfg, path)
    back = from_dict(Run, json.loads(path.read_text()))
    assert back == cfg
    assert to_dict(back)["optim"]["betas"] == [0.1, 0.2]


def test_load_order_defaults_then_file_then_overrides(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"steps": 7, "optim": {"lr": 0.01}}))
    cfg = load_config(Run, Run(name="base"), preset, ["optim.lr=0.5", "precision=bf16"])
    assert (cfg.name, cfg.steps, cfg.optim.lr, cfg.precision) == ("base", 7, 0.5, "bf16")
    assert cfg.optim.betas == (0.9, 0.999)


def test_int_widens_to_float_but_not_the_reverse():
    assert from_dict(Optim, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="'steps'.*integer"):
        from_dict(Run, {"steps": 1.5})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stepz": 3}, "unknown config key 'stepz'"),
        ({"optim": {"lrr": 3}}, "unknown config key 'optim.lrr'"),
        ({"precision": "fp16"}, "'precision'.*not one of"),
        ({"steps": True}, "'steps'.*integer"),
        ({"optim": {"betas": [0.9]}}, "optim.betas.*2 items"),
        ({"optim": 3}, "'optim'.*section"),
    ],
)
def test_bad_keys_and_types_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Run, data)


def test_override_parsing():
    assert parse_override("optim.lr=3e-4") == {"optim": {"lr": 3e-4}}
    assert parse_override("name=hello world") == {"name": "hello world"}
    assert parse_override("vq=null") == {"vq": None}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")


def test_bad_preset_file_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": "many"}')
    with pytest.raises(ConfigError, match="bad.json.*'steps'"):
        load_config(Run, None, bad)
    with pytest.raises(ConfigError, match="missing.json: preset file not found"):
        load_config(Run, None, tmp_path / "missing.json")
