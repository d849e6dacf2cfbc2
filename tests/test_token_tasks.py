"""The vq and guide tasks on real shards: the guide learns the tokens of a trained, exported VQ."""

import torch

from a2p.cli.export import main as export_main
from a2p.cli.train import main as train_main
from a2p.models.export import load_export

COMMON = ["--preset", "debug", "--set", "train.batch_size=2", "--set", "train.precision=fp32"]


def test_vq_then_guide_on_its_export(tiny_shards, tmp_path, capsys):
    torch.set_num_threads(1)
    data = str(tiny_shards["mel"])
    assert (
        train_main(["vq", "--data", data, "--run-dir", str(tmp_path / "vq"), "--max-steps", "3", *COMMON])
        == 0
    )
    vq_file = tmp_path / "vq.safetensors"
    assert export_main([str(tmp_path / "vq"), "--out", str(vq_file)]) == 0
    vq = load_export(vq_file, expect_task="vq").model
    assert all(bool(book.initialized) for book in vq.quantizer.codebooks)  # k-means ran on real keyframes

    guide_run = tmp_path / "guide"
    args = ["guide", "--data", data, "--run-dir", str(guide_run), "--max-steps", "2", "--vq", str(vq_file)]
    assert train_main([*args, *COMMON]) == 0
    assert (guide_run / "checkpoints" / "step_000002" / "model.pt").is_file()
    # a run directory works as the VQ too
    args = [
        "guide",
        "--data",
        data,
        "--run-dir",
        str(tmp_path / "g2"),
        "--max-steps",
        "1",
        "--vq",
        str(tmp_path / "vq"),
    ]
    assert train_main([*args, *COMMON]) == 0


def test_guide_without_its_vq_is_refused(tiny_shards, tmp_path, capsys):
    args = [
        "guide",
        "--data",
        str(tiny_shards["plain"]),
        "--run-dir",
        str(tmp_path / "g"),
        "--max-steps",
        "1",
    ]
    assert train_main([*args, *COMMON]) == 2
    assert "needs its trained VQ: --vq" in capsys.readouterr().err
    assert not (tmp_path / "g" / "checkpoints").exists()
    assert train_main([*args, "--vq", str(tmp_path / "missing"), *COMMON]) == 2
    assert "no such export file or run directory" in capsys.readouterr().err


def test_guide_whose_sizes_do_not_match_the_vq_is_refused(tiny_shards, tmp_path, capsys):
    data = str(tiny_shards["plain"])
    assert (
        train_main(["vq", "--data", data, "--run-dir", str(tmp_path / "vq"), "--max-steps", "1", *COMMON])
        == 0
    )
    args = [
        "guide",
        "--data",
        data,
        "--run-dir",
        str(tmp_path / "g"),
        "--max-steps",
        "1",
        "--vq",
        str(tmp_path / "vq"),
    ]
    assert train_main([*args, *COMMON, "--set", "task.model.codes=32"]) == 2
    assert "task.model expects 2 x 32" in capsys.readouterr().err
