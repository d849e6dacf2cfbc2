"""`a2p export`: a safetensors file that alone rebuilds the trained (EMA) model with identical outputs."""

import copy

import pytest
import torch

from a2p.cli.export import main as export_main
from a2p.cli.train import main as train_main
from a2p.errors import A2PError
from a2p.models.denoiser import ConditionInputs
from a2p.models.export import load_export
from a2p.training import checkpoint as ckpt
from a2p.training.export import export_run
from a2p.training.run_dir import latest_checkpoint
from a2p.training.tasks import build_task


@pytest.fixture
def body_shards(tiny_shards):
    return tiny_shards["plain"]


def test_export_rebuilds_the_ema_model_exactly(body_shards, tmp_path, capsys):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    args = [
        "body",
        "--data",
        str(body_shards),
        "--run-dir",
        str(run),
        "--preset",
        "debug",
        "--max-steps",
        "3",
    ]
    assert train_main([*args, "--set", "train.batch_size=2", "--set", "train.ema.decay=0.5"]) == 0
    out = tmp_path / "body.safetensors"
    assert export_main([str(run), "--out", str(out)]) == 0
    assert "ema weights of step 3" in capsys.readouterr().out

    exported = load_export(out, expect_task="body")
    assert exported.step == 3 and exported.weights == "ema"
    # the same model built by hand from the checkpoint's EMA
    checkpoint = latest_checkpoint(run / "checkpoints")
    task = build_task("body", exported.config)
    reference = task.build_model()
    ema = ckpt.load_file(checkpoint, "ema.pt")
    raw_state = ckpt.load_file(checkpoint, "model.pt")
    reference.load_state_dict({name: ema["params"].get(name, t) for name, t in raw_state.items()})
    raw = copy.deepcopy(reference)
    raw.load_state_dict(raw_state)
    reference.eval(), raw.eval()

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 90, 104, generator=gen)
    t = torch.tensor([10, 900])
    cond = ConditionInputs(
        torch.randn(2, 300, 160, generator=gen), torch.randn(2, 3, 104, generator=gen), None
    )
    with torch.no_grad():
        got, want, unaveraged = exported.model(x, t, cond), reference(x, t, cond), raw(x, t, cond)
    assert torch.equal(got, want)
    assert not torch.equal(got, unaveraged)  # it really is the EMA, not the last weights


def test_export_refuses_bad_inputs(tmp_path):
    with pytest.raises(A2PError, match="neither a checkpoint directory nor a run directory"):
        export_run(tmp_path, tmp_path / "x.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(A2PError, match="junk.safetensors: not a safetensors file"):
        load_export(junk)
    with pytest.raises(A2PError, match="export file not found"):
        load_export(tmp_path / "missing.safetensors")
