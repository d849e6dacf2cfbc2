"""DeepSpeed engines on gloo, CPU: ZeRO-3 training, exact resume and export, and resuming on
another rank count through DeepSpeed's universal checkpoints (Adam moments kept)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer_multiprocess import HERE, _env, _run_torchrun
from trainer_utils import DUMP_ENGINE_ENV, load_pt, read_scalars, scalar_tags, toy_config

from a2p.cli.export import main as export_main
from a2p.errors import A2PError
from a2p.models.export import load_export
from a2p.training import train
from a2p.training.backends import deepspeed as ds_backend
from a2p.training.backends.deepspeed import WEIGHTS_ONLY, prepare_rescaled_resume, universal_checkpoint
from a2p.training.tasks import build_task

pytestmark = pytest.mark.slow

DS_CONFIGS = HERE.parent / "ds_configs"
STEPS = (
    "train.max_steps=4",
    "train.checkpoint.interval=2",
    "train.checkpoint.keep=0",
    "train.log.interval=1",
)


def _deepspeed(config: Path) -> tuple[str, ...]:
    return ("train.backend=deepspeed", f"train.deepspeed_config={config}")


def _run_one(run_dir: Path, *overrides: str, resume: str) -> subprocess.CompletedProcess:
    """One rank in a child process (DeepSpeed leaves process-wide state behind)."""
    cmd = [sys.executable, str(HERE / "trainer_utils.py"), str(run_dir), "--resume", resume]
    for item in overrides:
        cmd += ["--set", item]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _assert_same_engine_state(loaded: Path, saved: Path) -> None:
    """The fp32 weights, Adam moments and step count an engine loaded are those another one saved."""
    loaded_state, saved_state = torch.load(loaded), torch.load(saved)
    assert loaded_state["steps"] == saved_state["steps"] == [2]
    for name, state in saved_state["params"].items():
        assert state["exp_avg"].abs().max() > 0 and state["exp_avg_sq"].abs().max() > 0, name
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(loaded_state["params"][name][key], state[key], atol=1e-6, rtol=0)


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_zero2_on_one_rank_resumes_on_two_with_its_adam_moments(tmp_path, monkeypatch, caplog):
    run, dumps = tmp_path / "run", tmp_path / "dumps"
    zero2 = (*_deepspeed(DS_CONFIGS / "zero2.json"), "train.max_steps=2", "train.checkpoint.interval=2")
    monkeypatch.setenv(DUMP_ENGINE_ENV, str(dumps / "one"))
    done = _run_one(run, *zero2, "train.batch_size=8", resume="latest")  # nothing to resume: a fresh start
    assert done.returncode == 0, done.stderr[-3000:]

    monkeypatch.setenv(DUMP_ENGINE_ENV, str(dumps / "two"))
    done = _run_torchrun(run, *zero2, "train.max_steps=3", resume="latest")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "holds ZeRO shards of 1 rank(s), this run has 2" in done.stderr
    assert "optimizer moments are re-cut from its universal form" in done.stderr
    assert "per-rank random streams cannot be kept" in done.stderr  # what still cannot be kept
    _assert_same_engine_state(dumps / "two/after_load.pt", dumps / "one/saved_000002.pt")

    # The conversion is kept inside the checkpoint and reused.
    step2 = run / "checkpoints/step_000002"
    assert (step2 / "deepspeed/universal/zero/0.weight/exp_avg.pt").is_file()
    assert not list((step2 / "deepspeed").glob(".*"))
    with caplog.at_level(logging.INFO, logger="a2p"):
        assert universal_checkpoint(step2) == step2 / "deepspeed"
    assert "converting" not in caplog.text
    with pytest.raises(A2PError, match="conversion to a DeepSpeed universal checkpoint failed"):
        universal_checkpoint(tmp_path / "dumps")

    # If DeepSpeed cannot convert a checkpoint, the run starts from its fp32 weights and says so.
    def cannot_convert(checkpoint):
        raise A2PError(f"{checkpoint}: conversion failed")

    monkeypatch.setattr(ds_backend, "universal_checkpoint", cannot_convert)
    model = build_task("toy", toy_config().task).build_model()
    with caplog.at_level(logging.WARNING, logger="a2p"):
        assert prepare_rescaled_resume(step2, model) == WEIGHTS_ONLY
    assert "the optimizer moments restart from zero" in caplog.text
    saved = torch.load(dumps / "one/saved_000002.pt")["params"]
    assert all(torch.equal(saved[name]["fp32"], t) for name, t in model.state_dict().items())


def test_zero3_trains_resumes_exactly_rescales_and_exports(tmp_path, monkeypatch, capsys):
    # Partition every parameter (the shipped threshold keeps the toy's small ones whole).
    config = json.loads((DS_CONFIGS / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    zero3 = (*_deepspeed(tmp_path / "zero3.json"), *STEPS, "train.grad_accum=2", "train.log.eval_interval=2")
    whole, part, one, ddp, dumps = (tmp_path / name for name in ("whole", "part", "one", "ddp", "dumps"))

    monkeypatch.setenv(DUMP_ENGINE_ENV, str(dumps / "whole"))
    done = _run_torchrun(whole, *zero3)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 rank(s) (deepspeed, fp32, global batch 16)" in done.stderr
    final = whole / "checkpoints/step_000004"
    model, ema = load_pt(final, "model.pt"), load_pt(final, "ema.pt")["params"]
    assert all(t.shape == ema[k].shape and t.numel() > 0 for k, t in model.items())  # gathered

    # Two ranks of ZeRO-3 compute what one process does with the same global batch: weights, the
    # EMA of the partitions and the evaluation of a full copy.
    train(
        "toy",
        toy_config(*STEPS, "train.grad_accum=2", "train.log.eval_interval=2", "train.batch_size=8"),
        ddp,
    )
    reference = ddp / "checkpoints/step_000004"
    assert _close(model, load_pt(reference, "model.pt"))
    assert _close(ema, load_pt(reference, "ema.pt")["params"])
    assert not _close(ema, model)
    evals, ddp_evals = read_scalars(whole, "eval/mse"), read_scalars(ddp, "eval/mse")
    assert evals.keys() == {2, 4} and all(evals[s] == pytest.approx(ddp_evals[s], abs=1e-6) for s in evals)

    # Resumed on two ranks from step 2 (every rank loads its partitions): the same run, bit for bit.
    monkeypatch.delenv(DUMP_ENGINE_ENV)
    done = _run_torchrun(part, *zero3, resume=str(whole / "checkpoints/step_000002"))
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = part / "checkpoints/step_000004"
    assert all(torch.equal(model[k], t) for k, t in load_pt(resumed, "model.pt").items())
    assert all(torch.equal(ema[k], t) for k, t in load_pt(resumed, "ema.pt")["params"].items())
    losses = read_scalars(whole, "train/loss")
    assert read_scalars(part, "train/loss") == {s: losses[s] for s in (3, 4)}

    # Resumed on one rank: weights and Adam moments re-cut from the universal form.
    monkeypatch.setenv(DUMP_ENGINE_ENV, str(dumps / "one"))
    done = _run_one(one, *zero3, "train.batch_size=8", resume=str(whole / "checkpoints/step_000002"))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_engine_state(dumps / "one/after_load.pt", dumps / "whole/saved_000002.pt")
    assert _close(model, load_pt(one / "checkpoints/step_000004", "model.pt"))

    # `a2p export` reads the gathered EMA of the ZeRO-3 checkpoint.
    out = tmp_path / "toy.safetensors"
    assert export_main([str(whole), "--out", str(out)]) == 0
    assert "ema weights of step 4" in capsys.readouterr().out
    exported = load_export(out, "toy").model.state_dict()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)


def test_a_deepspeed_bf16_face_run_evaluates_in_bf16(tiny_shards, tmp_path):
    """ZeRO-1/2 keep bf16 weights in the module: evaluation runs under the training autocast."""
    run = tmp_path / "face"
    cmd = [sys.executable, "-m", "a2p.cli.train", "face", "--data", str(tiny_shards["mel"]), "--run-dir", str(run),
           "--preset", "debug", "--max-steps", "2", "--deepspeed", str(DS_CONFIGS / "zero2.json")]  # fmt: skip
    for item in ("train.batch_size=2", "train.precision=bf16", "train.log.eval_interval=2",
                 "task.eval_sampler=ddim2", "task.eval_metric_windows=1"):  # fmt: skip
        cmd += ["--set", item]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"eval/sample_mse", "eval/fd_k"} <= scalar_tags(run), sorted(scalar_tags(run))
