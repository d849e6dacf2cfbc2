"""`a2p import-reference` on files in the released containers: four exports that sample and evaluate,
or a refusal that writes nothing.

The release files are made here with `torch.save` in the reference's containers, in float32, from
seeded tensors of the key/shape lists its own classes wrote (`tests/fixtures/reference/*.keys.json`):
the face, body and guide files each carry the same vq-wav2vec (`audio_model.*`,
`audio_resampler.kernel`, as the released files do) and the face file the lip regressor
(`lip_model.*`); the person's units are the released GQS883 `data_stats.pth`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from reference_weights import (
    FIXTURES,
    read_keys,
    seeded_array,
    seeded_front_end,
    seeded_state_dict,
    vq_overrides,
)
from test_reference_release import diffusion_file, guide_file

from a2p.cli.eval import main as eval_main
from a2p.cli.import_reference import main
from a2p.cli.sample import main as sample_main
from a2p.data.person_stats import load_person_stats
from a2p.errors import A2PError
from a2p.inference import Pipeline
from a2p.inference.pipeline import Windowing
from a2p.models.export import load_export
from a2p.models.lip import face_audio_condition, load_lip_regressor
from a2p.models.wav2vec1_files import load_vq_wav2vec_features

STATS = FIXTURES / "GQS883_data_stats.pth"
NAMES = ("face", "body", "guide", "vq")


def vq_file() -> dict:
    net = {k: v.float() for k, v in seeded_state_dict(read_keys("vq"), 0, vq_overrides()).items()}
    return {"net": net, "optimizer": {"state": {}}, "scheduler": {"last_epoch": 3}}


def float32(state: dict) -> dict:
    return {k: v.float() for k, v in state.items()}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    audio = float32(seeded_front_end("audio", 1))
    lip = {f"lip_model.{k}": v for k, v in float32(seeded_front_end("lip", 2)).items()}
    guide = guide_file()
    guide["model_state_dict"] = float32(guide["model_state_dict"]) | audio
    files = {
        "face": float32(diffusion_file("face")) | audio | lip,
        "body": float32(diffusion_file("body")) | audio,
        "guide": guide,
        "vq": vq_file(),
    }
    for name, container in files.items():
        torch.save(container, folder / f"{name}.pt")
    return folder


def args(release, out, **replace):
    names = {name: release / f"{name}.pt" for name in NAMES} | replace
    return [
        *(x for name, path in names.items() for x in (f"--{name}", str(path))),
        "--stats",
        str(STATS),
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported")
    assert main(args(release, out)) == 0
    return {name: out / f"{name}.safetensors" for name in NAMES}


def test_import_writes_four_exports_in_the_persons_units(imported):
    stats = load_person_stats(STATS)
    for name in NAMES:
        exported = load_export(imported[name], expect_task=name)
        assert exported.weights == "reference"
        np.testing.assert_allclose(exported.stats["body_mean"], stats.body_mean)
    face = load_export(imported["face"])
    assert face.config["featurizer"] == "vq-wav2vec+lip" and face.model.config.positions == "reference"
    front_end = {key for key, _ in read_keys("audio")} | {f"lip_model.{key}" for key, _ in read_keys("lip")}
    assert set(face.frontend) == front_end
    assert load_export(imported["body"]).config["featurizer"] == "vq-wav2vec"
    np.testing.assert_allclose(face.stats["audio_std_flat"], stats.audio_std_flat)


def test_the_front_end_is_the_references_on_the_persons_waveform(release, imported):
    """The features each model reads equal the released files' own front end run on the waveform
    normalized with data_stats.pth: vq-wav2vec for the body and guide, + lip vertices for the face."""
    pipe = Pipeline.from_exports(**imported)
    audio = seeded_array((60 * 1600, 2), 5, 0.1).float().numpy()
    clip = pipe.prepare(audio)
    waveform = load_person_stats(STATS).normalize_audio(torch.from_numpy(audio))[None]
    vq = load_vq_wav2vec_features(release / "body.pt")
    lip = load_lip_regressor(release / "face.pt")
    assert torch.equal(clip.features["body"], vq(waveform))
    assert torch.equal(clip.features["guide"], clip.features["body"])
    assert torch.equal(clip.features["face"], face_audio_condition(vq, lip, waveform))
    assert clip.features["face"].shape == (1, 198, 2038) and not clip.per_window
    assert len(pipe.front_end.extractors) == 1  # the three files' one vq-wav2vec runs once


def test_a_long_clip_is_featurized_window_by_window(imported):
    """Each window is read as the reference reads a clip: its own audio alone, not a slice."""
    pipe = Pipeline.from_exports(**imported, windowing=Windowing(window=60, overlap=30, batch=2))
    audio = seeded_array((120 * 1600, 2), 6, 0.1).float().numpy()
    clip = pipe.prepare(audio)
    assert clip.per_window and clip.plan.starts == (0, 30, 60)
    for i, start in enumerate(clip.plan.starts):
        window = torch.from_numpy(audio[start * 1600 : (start + 60) * 1600])[None]
        assert torch.equal(clip.features["face"][i : i + 1], pipe.front_end(window)["face"])
    out = pipe.sample(audio, reps=2, setting="ddim2", seed=1)
    assert out["face"].shape == (2, 120, 256) and out["body"].shape == (2, 120, 104)
    assert out["keyframes"].shape == (2, 4, 104) and all(np.isfinite(v).all() for v in out.values())
    with pytest.raises(
        A2PError, match=r"a window of 601 frames is longer than these models read at once \(600 frames"
    ):
        Pipeline.from_exports(**imported, windowing=Windowing(window=601))


def test_an_imported_release_samples_a_split_and_evaluates(imported, tiny_shards, tmp_path, capsys):
    """import -> a2p sample --data -> a2p eval: the test split's four 600-frame chunks."""
    exports = [x for name in NAMES for x in (f"--{name}", str(imported[name]))]
    data, samples, report = str(tiny_shards["plain"]), tmp_path / "samples", tmp_path / "report.json"
    assert sample_main([*exports, "--data", data, "--split", "test", "--out", str(samples), "--reps", "2",
                        "--sampler", "ddim1"]) == 0  # fmt: skip
    clips = sorted(samples.glob("*.npz"))
    assert clips
    for path in clips:
        with np.load(path) as result:
            frames = result["face"].shape[1]
            assert result["face"].shape == (2, frames, 256) and result["body"].shape == (2, frames, 104)
            assert result["keyframes"].shape == (2, math.ceil(frames / 30), 104)
            assert np.isfinite(result["body"]).all()
    assert eval_main(["--data", data, "--results", str(samples), "--out", str(report)]) == 0
    metrics = json.loads(report.read_text())
    for part in ("body", "face"):
        assert metrics[part]["chunks"] == len(clips) == 4 and metrics[part]["repetitions"] == 2
        assert all(
            math.isfinite(metrics[part][key]) for key in ("pooled_fd_g", "pooled_fd_k", "pooled_div_g")
        )


def test_mixing_a2p_and_imported_models_is_refused(imported, exports, tmp_path, capsys):
    models = {name: str(imported[name]) for name in NAMES} | {"body": str(exports["body"])}
    with pytest.raises(
        A2PError, match=r"a2p models and `a2p import-reference` models cannot be sampled together"
    ):
        Pipeline.from_exports(**models)


def test_a_face_file_without_its_lip_regressor_is_refused(release, tmp_path, capsys):
    face = {k: v for k, v in torch.load(release / "face.pt").items() if not k.startswith("lip_model.")}
    torch.save(face, tmp_path / "face.pt")
    out = tmp_path / "out"
    assert main(args(release, out, face=tmp_path / "face.pt")) == 2
    err = capsys.readouterr().err
    assert "face.pt" in err and "needs the lip regressor, but no 'lip_model.*' tensors are stored" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "source", "message"),
    [
        ("face", "body", "holds the body diffusion model, not the face diffusion model"),
        ("guide", "vq", "holds the body VQ-VAE checkpoint, not the guide transformer checkpoint"),
        ("vq", "guide", "guide checkpoint"),
    ],
)
def test_a_wrong_file_is_refused_by_name_and_nothing_is_written(
    release, tmp_path, capsys, flag, source, message
):
    out = tmp_path / "out"
    assert main(args(release, out, **{flag: release / f"{source}.pt"})) == 2
    err = capsys.readouterr().err
    assert f"{source}.pt" in err and message in err
    assert not out.exists() or not list(out.iterdir())


def test_a_truncated_file_is_refused(release, tmp_path, capsys):
    broken = tmp_path / "face.pt"
    broken.write_bytes((release / "face.pt").read_bytes()[:100_000])
    assert main(args(release, tmp_path / "out", face=broken)) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "truncated or not a torch file" in err
    assert not (tmp_path / "out").exists()
