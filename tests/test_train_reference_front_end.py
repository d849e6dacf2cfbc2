"""The paper presets train on the reference's frozen front end, and their exports sample.

The front end's weights are the seeded ones of the golden fixtures (`seeded_front_end`), saved as
a released face checkpoint would hold them (`audio_model.*`, `audio_resampler.kernel`,
`lip_model.*`); the shards are the synthesized person's, whose folder has a data_stats.pth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_weights import seeded_front_end

from a2p.cli.export import main as export_main
from a2p.cli.sample import main as sample_main
from a2p.cli.train import main as train_main
from a2p.constants import CROP_MAX_FRAMES, SAMPLES_PER_FRAME
from a2p.data import build_train_loader
from a2p.data.format import load_manifest
from a2p.errors import ConfigError
from a2p.models.export import load_export
from a2p.models.lip import face_audio_condition, load_lip_regressor
from a2p.models.wav2vec1 import vq_wav2vec_frames
from a2p.models.wav2vec1_files import load_vq_wav2vec_features
from a2p.training.audio_inputs import AudioInputs

SMALL = {  # the paper presets' schemes (positions, null tokens, front end) at a test's sizes
    "face": ["width=32", "layers=1", "heads=2", "ff_dim=32", "audio_encoder_layers=1"],
    "body": ["width=32", "layers=1", "heads=2", "ff_dim=32", "conv_head_width=16"],
    "guide": ["width=16", "layers=1", "heads=2", "ff_dim=16", "audio_width=16", "codes=16", "levels=2"],
}


@pytest.fixture(scope="module")
def face_file(tmp_path_factory):
    """A released face checkpoint's front end: vq-wav2vec and the lip regressor, float32."""
    audio = {k: v.float() for k, v in seeded_front_end("audio", 1).items()}
    lip = {f"lip_model.{k}": v.float() for k, v in seeded_front_end("lip", 2).items()}
    path = tmp_path_factory.mktemp("release") / "face.pt"
    torch.save(audio | lip, path)
    return path


def test_training_features_are_the_references_on_the_padded_normalized_crop(face_file, tiny_shards):
    data = str(tiny_shards["plain"])
    inputs = AudioInputs("vq-wav2vec+lip", str(face_file), 2038, "task.model.audio_dim", role="face")
    inputs.check_shards(data, "auto")
    loader = build_train_loader(data, 2, seed=1, rank=0, world_size=1, units="auto")
    batch = next(iter(loader))
    assert (batch["length"] < CROP_MAX_FRAMES).any(), "the test needs a padded crop"
    features = inputs(batch, torch.device("cpu"))
    assert features.shape == (2, vq_wav2vec_frames(CROP_MAX_FRAMES), 2038)
    # the reference: normalize the waveform with data_stats.pth, crop, pad with zeros, featurize
    person = load_manifest(data).person_stats
    mean, std = torch.tensor(person["audio_mean"]), torch.tensor(person["audio_std_flat"])
    audio = (batch["audio"] - mean) / std
    for row, length in enumerate(batch["length"].tolist()):
        audio[row, length * SAMPLES_PER_FRAME :] = 0
    expected = face_audio_condition(load_vq_wav2vec_features(face_file), load_lip_regressor(face_file), audio)
    assert torch.equal(features, expected)


def test_the_reference_front_end_needs_weights_and_the_persons_units(face_file, tiny_shards):
    data = str(tiny_shards["plain"])
    with pytest.raises(Exception, match="needs the frozen vq-wav2vec's weights"):
        AudioInputs("vq-wav2vec", None, 1024, "task.model.audio_dim", role="body").check_shards(data, "auto")
    inputs = AudioInputs("vq-wav2vec", str(face_file), 1024, "task.model.audio_dim", role="body")
    with pytest.raises(ConfigError, match="reads the waveform in the person's units"):
        inputs.check_shards(data, "train")
    wide = AudioInputs("vq-wav2vec", str(face_file), 2038, "task.model.audio_dim", role="body")
    with pytest.raises(ConfigError, match="width 1024, but task.model.audio_dim is 2038"):
        wide.check_shards(data, "auto")


def test_paper_presets_train_export_and_sample(face_file, tiny_shards, tmp_path):
    """The four paper presets (at small sizes) train a step each; their exports sample the test split."""
    torch.set_num_threads(1)
    data = str(tiny_shards["plain"])
    common = ["--data", data, "--max-steps", "1", "--set", "train.batch_size=1"]
    files = {}
    for task in ("vq", "face", "body", "guide"):
        flags = [x for item in SMALL.get(task, []) for x in ("--set", f"task.model.{item}")]
        if task == "vq":
            flags = ["--preset", "debug"]
        else:
            flags += ["--audio-weights", str(face_file)]
        if task == "guide":
            flags += ["--vq", str(files["vq"])]
        run = tmp_path / task
        assert train_main([task, *common, "--run-dir", str(run), *flags]) == 0
        files[task] = tmp_path / f"{task}.safetensors"
        assert export_main([str(run), "--out", str(files[task])]) == 0
    face = load_export(files["face"])
    assert face.config["featurizer"] == "vq-wav2vec+lip" and face.model.config.null_audio_tokens == 1998
    stored = torch.load(face_file)  # the export keeps what the front end runs: not vq-wav2vec's aggregator
    used = {
        k
        for k in stored
        if k.startswith(("audio_model.feature_extractor.", "audio_resampler.", "lip_model."))
    }
    assert face.frontend is not None and set(face.frontend) == used
    assert all(torch.equal(face.frontend[k], stored[k]) for k in used)
    assert (
        face.stats is not None
        and face.stats["audio_std_flat"] == load_manifest(data).person_stats["audio_std_flat"]
    )
    out = tmp_path / "samples"
    exports = [x for name in ("face", "body", "guide", "vq") for x in (f"--{name}", str(files[name]))]
    assert sample_main([*exports, "--data", data, "--split", "test", "--out", str(out), "--reps", "1",
                        "--sampler", "ddim1"]) == 0  # fmt: skip
    clips = sorted(out.glob("*.npz"))
    assert len(clips) == 4
    for path in clips:
        with np.load(path) as result:
            frames = result["face"].shape[1]
            assert result["face"].shape == (1, frames, 256) and result["body"].shape == (1, frames, 104)
            assert result["keyframes"].shape == (1, math.ceil(frames / 30), 104)
            assert np.isfinite(result["face"]).all() and np.isfinite(result["body"]).all()
