"""`a2p import-reference` on files in the released containers: four exports, or a refusal that writes nothing.

The release files are made here with `torch.save` in the reference's containers, from seeded
tensors of the key/shape lists its own classes wrote (`tests/fixtures/reference/*.keys.json`),
plus front-end tensors; the person's units are the released GQS883 `data_stats.pth`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_weights import FIXTURES, read_keys, seeded_state_dict, vq_overrides
from test_reference_release import diffusion_file, guide_file

from a2p.cli.import_reference import main
from a2p.data.person_stats import load_person_stats
from a2p.models.export import load_export

STATS = FIXTURES / "GQS883_data_stats.pth"


def vq_file() -> dict:
    net = {k: v.float() for k, v in seeded_state_dict(read_keys("vq"), 0, vq_overrides()).items()}
    return {"net": net, "optimizer": {"state": {}}, "scheduler": {"last_epoch": 3}}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    files = {
        "face": diffusion_file("face"),
        "body": diffusion_file("body"),
        "guide": guide_file(),
        "vq": vq_file(),
    }
    for name, container in files.items():
        torch.save(container, folder / f"{name}.pt")
    return folder


def args(release, out, **replace):
    names = {name: release / f"{name}.pt" for name in ("face", "body", "guide", "vq")} | replace
    return [
        *(x for name, path in names.items() for x in (f"--{name}", str(path))),
        "--stats",
        str(STATS),
        "--out",
        str(out),
    ]


def test_import_writes_four_exports_in_the_persons_units(release, tmp_path, capsys):
    assert main(args(release, tmp_path / "out")) == 0
    stats = load_person_stats(STATS)
    for name in ("face", "body", "guide", "vq"):
        exported = load_export(tmp_path / "out" / f"{name}.safetensors", expect_task=name)
        assert exported.weights == "reference"
        np.testing.assert_allclose(exported.stats["body_mean"], stats.body_mean)
    face = load_export(tmp_path / "out" / "face.safetensors")
    assert face.config["featurizer"] == "vq-wav2vec+lip" and face.model.config.positions == "reference"
    assert list(face.frontend) == ["audio_model.feature_extractor.conv_layers.0.0.weight"]
    np.testing.assert_allclose(face.stats["audio_std_flat"], stats.audio_std_flat)


def test_sampling_an_imported_release_says_what_is_missing(release, tmp_path, capsys):
    from a2p.cli.sample import main as sample_main

    assert main(args(release, tmp_path / "out")) == 0
    exports = [
        x
        for name in ("face", "body", "guide", "vq")
        for x in (f"--{name}", str(tmp_path / "out" / f"{name}.safetensors"))
    ]
    clip = tmp_path / "clip.wav"
    import soundfile as sf

    sf.write(clip, np.zeros((48_000, 2)), 48_000)
    assert sample_main([str(clip), *exports, "--out", str(tmp_path / "samples")]) == 2
    assert "an `a2p import-reference` export" in capsys.readouterr().err


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
