"""Checkpoint directories: atomic writes, the `latest` pointer, keep-last-K, full round trips."""

import json
import random

import numpy as np
import pytest
import torch

from a2p.errors import A2PError
from a2p.training import checkpoint as ckpt
from a2p.training import rng, run_dir
from a2p.training.ema import EMA


def _save(root, step, keep=0, **shared):
    return ckpt.save_checkpoint(
        root,
        step,
        shared={"model.pt": {"w": torch.full((3,), float(step))}, **shared},
        rank_state={"rng": rng.capture_rng(), "data": {"position": step * 10}},
        meta={"task": "toy", "backend": "ddp"},
        config={"train": {"max_steps": 9}},
        keep=keep,
    )


def test_round_trip_of_every_part(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5**s)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    ema = EMA(model, decay=0.9)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = ckpt.save_checkpoint(
        tmp_path / "checkpoints",
        7,
        shared={
            "model.pt": model.state_dict(),
            "optimizer.pt": optimizer.state_dict(),
            "scheduler.pt": scheduler.state_dict(),
            "ema.pt": ema.state_dict(),
        },
        rank_state={"rng": rng.capture_rng(), "data": {"position": 70, "shard": "a.tar"}},
        meta={"task": "toy", "backend": "ddp"},
        config={"train": {"seed": 4}},
        keep=3,
    )
    assert path.name == "step_000007"
    expected = (random.random(), np.random.rand(), torch.rand(2))

    meta = run_dir.read_meta(path)
    assert (meta["step"], meta["task"], meta["world_size"], meta["format"]) == (
        7,
        "toy",
        1,
        ckpt.FORMAT_VERSION,
    )
    assert set(meta["files"]) == {p.name for p in path.iterdir()}
    assert json.loads((path / "config.json").read_text()) == {"train": {"seed": 4}}
    for name, tensor in ckpt.load_file(path, "model.pt").items():
        assert torch.equal(tensor, model.state_dict()[name])
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(ckpt.load_file(path, "optimizer.pt"))
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert ckpt.load_file(path, "scheduler.pt")["last_epoch"] == 1
    ema2 = EMA(torch.nn.Linear(3, 2), decay=0.9)
    ema2.load_state_dict(ckpt.load_file(path, "ema.pt"))
    assert all(torch.equal(ema2.params[k], ema.params[k]) for k in ema.params)

    rank = ckpt.load_file(path, ckpt.rank_file_name(0))
    assert rank["data"] == {"position": 70, "shard": "a.tar"}
    random.random(), np.random.rand(), torch.rand(5)  # move the streams on
    rng.restore_rng(rank["rng"])
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert again[0] == expected[0] and again[1] == expected[1] and torch.equal(again[2], expected[2])


def test_latest_pointer_and_keep_last_k(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 6):
        _save(root, step, keep=2)
    assert [s for s, _ in run_dir.list_checkpoints(root)] == [4, 5]
    assert (root / run_dir.LATEST).read_text().strip() == "step_000005"
    assert run_dir.latest_checkpoint(root) == root / "step_000005"
    assert not list(root.glob(".*"))  # no temp leftovers
    assert run_dir.resolve_resume(tmp_path, "latest") == root / "step_000005"
    assert run_dir.resolve_resume(tmp_path, str(tmp_path)) == root / "step_000005"
    assert run_dir.resolve_resume(tmp_path, str(root / "step_000004")) == root / "step_000004"
    assert run_dir.resolve_resume(tmp_path, None) is None


def test_crash_mid_save_keeps_previous_checkpoint_and_latest(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    real_save = ckpt._save

    def crashing_save(obj, path):
        if path.name == "model.pt":
            path.write_bytes(b"half a file")
            raise OSError("disk full (simulated)")
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "_save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        _save(root, 2)
    assert not (root / "step_000002").exists()
    assert (root / run_dir.LATEST).read_text().strip() == "step_000001"
    assert run_dir.latest_checkpoint(root) == root / "step_000001"
    assert torch.equal(ckpt.load_file(root / "step_000001", "model.pt")["w"], torch.ones(3))
    assert [s for s, _ in run_dir.list_checkpoints(root)] == [1]

    monkeypatch.setattr(ckpt, "_save", real_save)
    _save(root, 2)  # the next save clears the half-written temp directory
    assert [s for s, _ in run_dir.list_checkpoints(root)] == [1, 2]
    assert not list(root.glob(".*tmp"))


def test_resaving_a_step_replaces_it_and_missing_latest_falls_back(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    _save(root, 2)
    ckpt.save_checkpoint(
        root,
        2,
        shared={"model.pt": {"w": torch.zeros(3)}},
        rank_state={"rng": rng.capture_rng(), "data": {}},
        meta={"task": "toy"},
        config={},
        keep=0,
    )
    assert torch.equal(ckpt.load_file(root / "step_000002", "model.pt")["w"], torch.zeros(3))
    (root / run_dir.LATEST).write_text("step_000009\n")  # points at nothing
    assert run_dir.latest_checkpoint(root) == root / "step_000002"


def test_resume_targets(tmp_path):
    assert run_dir.resolve_resume(tmp_path, "latest") is None  # requeued before the first save
    with pytest.raises(A2PError, match="not a checkpoint directory"):
        run_dir.resolve_resume(tmp_path, str(tmp_path / "nowhere"))


def test_ema_folds_weights_per_update():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.75, start_step=1)
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model, step=1)  # up to start_step: a copy
    assert torch.equal(ema.params["weight"], torch.full((1, 2), 4.0))
    with torch.no_grad():
        model.weight.fill_(8.0)
    ema.update(model, step=2)
    assert torch.allclose(ema.params["weight"], torch.full((1, 2), 0.75 * 4.0 + 0.25 * 8.0))
    copy = ema.averaged_copy(model)
    assert torch.allclose(copy.weight, torch.full((1, 2), 5.0)) and ema.num_updates == 2
