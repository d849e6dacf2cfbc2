"""Every shipped DeepSpeed config is accepted by the trainer and completed from its config."""

from pathlib import Path

import pytest

from a2p.config.train import TrainConfig
from a2p.training.backends.deepspeed import deepspeed_config

DS_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "ds_configs").glob("*.json"))


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_consistent_with_the_trainer(path):
    config = TrainConfig(backend="deepspeed", deepspeed_config=str(path), precision="bf16")
    ds = deepspeed_config(config, world_size=4)
    assert ds["train_batch_size"] == config.batch_size * config.grad_accum * 4
    assert ds["train_micro_batch_size_per_gpu"] == config.batch_size
    assert ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage"] in (1, 2, 3)
    assert "optimizer" not in ds and "scheduler" not in ds


def test_there_are_configs_for_zero_1_2_and_3():
    assert {p.name for p in DS_CONFIGS} >= {"zero1.json", "zero2.json", "zero3.json"}
