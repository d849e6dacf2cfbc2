"""`a2p eval`: chunks line up with the split, the truth scores FD 0, 1 and 2 sampling processes score alike."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from a2p.cli.eval import main as eval_main
from a2p.cli.sample import main as sample_main
from a2p.data.chunks import iter_split_chunks


@pytest.fixture(scope="module")
def truth(tiny_shards):
    """name -> (body, face, face complete) of every test chunk."""
    return {
        name: (batch["body"][0].numpy(), batch["face"][0].numpy(), bool(batch["face_mask"][0].all()))
        for name, _first, batch in iter_split_chunks(tiny_shards["plain"], "test", audio=False)
    }


def write_results(folder, truth, noise: float, reps: int = 2, seed: int = 0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for name, (body, face, _) in truth.items():
        np.savez(
            folder / f"{name}.npz",
            body=body[None] + noise * rng.standard_normal((reps, *body.shape)),
            face=face[None] + noise * rng.standard_normal((reps, *face.shape)),
        )


def test_the_truth_itself_scores_fd_zero_and_its_own_diversity(tiny_shards, truth, tmp_path):
    assert len(truth) == 4  # 4 test scenes of 20 s, one whole 600-frame chunk each
    write_results(tmp_path / "truth", truth, noise=0.0)
    report_file = tmp_path / "report.json"
    args = [
        "--data",
        str(tiny_shards["plain"]),
        "--results",
        str(tmp_path / "truth"),
        "--out",
        str(report_file),
    ]
    assert eval_main(args) == 0
    report = json.loads(report_file.read_text())
    body = report["body"]
    assert body["fd_g"]["mean"] == pytest.approx(0.0, abs=1e-6) and body["fd_k"]["mean"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert body["div_k"]["mean"] == pytest.approx(body["gt_div_k"])
    assert body["frames"] == 4 * 600 and body["repetitions"] == 2 and body["var_reps"] == 0.0
    face = report["face"]  # only frames with a captured face count (the synthesized data drops some)
    assert 0 < face["frames"] < 4 * 600 and face["fd_g"]["mean"] == pytest.approx(0.0, abs=1e-6)

    # a constant shift of the body by s moves FD_g by |s|^2 and leaves FD_k alone
    shifted = tmp_path / "shifted"
    write_results(shifted, {n: (b + 0.5, f, ok) for n, (b, f, ok) in truth.items()}, noise=0.0)
    assert (
        eval_main(["--data", str(tiny_shards["plain"]), "--results", str(shifted), "--out", str(report_file)])
        == 0
    )
    body = json.loads(report_file.read_text())["body"]
    assert body["fd_g"]["mean"] == pytest.approx(0.25 * 104, rel=1e-6)
    assert body["fd_k"]["mean"] == pytest.approx(0.0, abs=1e-6)


def test_a_missing_chunk_is_named(tiny_shards, truth, tmp_path, capsys):
    write_results(tmp_path / "some", truth, noise=0.1)
    gone = sorted(truth)[1]
    (tmp_path / "some" / f"{gone}.npz").unlink()
    assert eval_main(["--data", str(tiny_shards["plain"]), "--results", str(tmp_path / "some")]) == 2
    assert gone in capsys.readouterr().err


def test_sampled_by_two_processes_scores_what_one_process_scores(tiny_shards, model_args, tmp_path):
    data = str(tiny_shards["plain"])
    args = [
        *model_args,
        "--data",
        data,
        "--split",
        "test",
        "--reps",
        "2",
        "--sampler",
        "ddim3",
        "--seed",
        "1",
    ]
    assert sample_main([*args, "--out", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "a2p.cli.sample", *args, "--out", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    reports = []
    for name in ("one", "two"):
        out = tmp_path / f"{name}.json"
        assert eval_main(["--data", data, "--results", str(tmp_path / name), "--out", str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    for part in ("body", "face"):
        for metric in ("fd_g", "fd_k", "div_g", "div_k"):
            one, two = reports[0][part][metric]["values"], reports[1][part][metric]["values"]
            np.testing.assert_allclose(one, two, rtol=1e-4, err_msg=f"{part} {metric}")
        assert reports[0][part]["frames"] == reports[1][part]["frames"] > 0


def test_report_adds_the_references_pooled_metrics(tiny_shards, truth, tmp_path, capsys):
    """Pooled FD_g, FD_k, Div_g (all repetitions in one Gaussian) beside the per-repetition keys."""
    from a2p.evaluation.metrics import pooled_metrics
    from a2p.evaluation.run import load_split_results

    write_results(tmp_path / "noisy", truth, noise=0.2, reps=3)
    report_file = tmp_path / "report.json"
    data = str(tiny_shards["plain"])
    args = ["--data", data, "--results", str(tmp_path / "noisy"), "--out", str(report_file), "--seed", "2"]
    assert eval_main(args) == 0
    table = capsys.readouterr().out
    report = json.loads(report_file.read_text())
    loaded = load_split_results(data, tmp_path / "noisy")
    for part in ("body", "face"):
        pred, gt, valid = loaded[part]
        expected = pooled_metrics(pred, gt, seed=2, mask=None if valid.all() else valid)
        for name, value in expected.items():
            assert report[part][name] == pytest.approx(value, rel=1e-12), (part, name)
        for name in ("fd_g", "fd_k", "div_g", "div_k"):  # a2p's per-repetition values stay
            assert set(report[part][name]) == {"mean", "spread", "values"}
            assert len(report[part][name]["values"]) == 3
        assert report[part]["repetitions"] == 3
    for name in ("pooled_fd_g", "pooled_fd_k", "pooled_div_g", "fd_g", "gt_div_g", "frames"):
        assert f"| {name} |" in table
    # the truth itself: pooled FD 0 as well, and a shift of s moves pooled FD_g by |s|^2
    write_results(tmp_path / "shifted", {n: (b + 0.5, f, ok) for n, (b, f, ok) in truth.items()}, noise=0.0)
    assert eval_main(["--data", data, "--results", str(tmp_path / "shifted"), "--out", str(report_file)]) == 0
    body = json.loads(report_file.read_text())["body"]
    assert body["pooled_fd_g"] == pytest.approx(0.25 * 104, rel=1e-6)
    assert body["pooled_fd_k"] == pytest.approx(0.0, abs=1e-6)
