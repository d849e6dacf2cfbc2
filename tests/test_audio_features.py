"""Audio featurizers: 100 Hz shapes, determinism, both channels, frozen, chunking, weight files, errors."""

import typing

import pytest
import torch
from safetensors.torch import save_file

from a2p.config import from_dict
from a2p.config.audio import FEATURE_DIMS, AudioConfig, FeaturizerName
from a2p.constants import SAMPLES_PER_FEATURE
from a2p.errors import ConfigError
from a2p.models.audio import Wav2Vec2Featurizer, build_featurizer, featurize_long, featurizer_names

torch.set_num_threads(1)


def stereo(seconds: float, extra: int = 0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    samples = int(seconds * 48_000) + extra
    return torch.rand(2, samples, 2, generator=generator) * 2 - 1  # (B, S, 2)


@pytest.fixture(scope="module")
def wav2vec2() -> Wav2Vec2Featurizer:
    torch.manual_seed(0)
    return Wav2Vec2Featurizer()


@pytest.fixture(params=["mel", "wav2vec2"])
def featurizer(request, wav2vec2):
    return build_featurizer("mel") if request.param == "mel" else wav2vec2


def test_registry_matches_config_choices():
    assert featurizer_names() == sorted(typing.get_args(FeaturizerName))
    assert build_featurizer("mel").dim == FEATURE_DIMS["mel"] == AudioConfig().dim
    assert from_dict(AudioConfig, {"featurizer": "wav2vec2", "weights": "w.pt"}).dim == 1024


@pytest.mark.parametrize("extra", [0, 1, 479])
def test_one_frame_per_480_samples(featurizer, extra):
    audio = stereo(0.5, extra)
    features = featurizer(audio)
    assert features.shape == (2, audio.shape[1] // SAMPLES_PER_FEATURE, featurizer.dim)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_deterministic_and_rows_independent(featurizer):
    audio = stereo(0.4)
    once = featurizer(audio)
    assert torch.equal(once, featurizer(audio))
    torch.testing.assert_close(featurizer(audio[1:]), once[1:], rtol=0, atol=1e-5)


def test_each_channel_has_its_own_half(featurizer):
    audio = stereo(0.4)
    partner_changed = audio.clone()
    partner_changed[..., 1] = stereo(0.4, seed=1)[..., 1]
    before, after = featurizer(audio), featurizer(partner_changed)
    half = featurizer.dim // 2
    assert torch.equal(before[..., :half], after[..., :half])
    assert (before[..., half:] - after[..., half:]).abs().max() > 1e-2


def test_frozen_even_when_asked_to_train(featurizer):
    featurizer.train()
    assert not featurizer.training
    assert not any(p.requires_grad for p in featurizer.parameters())
    audio = stereo(0.2).requires_grad_(True)
    assert not featurizer(audio).requires_grad


def test_float32_output_under_autocast(featurizer):
    audio = stereo(0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = featurizer(audio)
    assert features.dtype == torch.float32
    assert torch.equal(features, featurizer(audio))


def test_window_differs_from_clip_only_at_its_edges(featurizer):
    audio = stereo(1.0)
    whole = featurizer(audio)
    start, stop = 30, 70  # frames; even, so on the wav2vec2 50 Hz grid
    window = featurizer(audio[:, start * SAMPLES_PER_FEATURE : stop * SAMPLES_PER_FEATURE])
    c = featurizer.context_frames
    torch.testing.assert_close(window[:, c:-c], whole[:, start + c : stop - c], rtol=0, atol=1e-5)
    assert (window[:, 0] - whole[:, start]).abs().max() > 1e-3


def test_chunked_long_clip_equals_whole_clip(featurizer):
    audio = stereo(1.5, extra=301)
    whole = featurizer(audio)
    chunked = featurize_long(featurizer, audio, chunk_frames=33)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_wav2vec2_weights_round_trip(tmp_path, wav2vec2, suffix):
    path = tmp_path / f"w2v{suffix}"
    # A whole model's state dict: the loader keeps the `conv_layers.*` tensors under any prefix.
    state = {f"model.feature_extractor.{k}": v.clone() for k, v in wav2vec2.extractor.state_dict().items()}
    state["model.encoder.unrelated.weight"] = torch.zeros(3)
    (save_file if suffix == ".safetensors" else torch.save)(state, str(path))
    loaded = build_featurizer("wav2vec2", str(path))
    assert loaded.norm_mode == "layer_norm" and len(loaded.weights_digest) == 64
    assert loaded.fingerprint.startswith("wav2vec2:1:")
    audio = stereo(0.3)
    assert torch.equal(loaded(audio), wav2vec2(audio))


def test_wav2vec2_base_layout_is_detected(tmp_path):
    base = Wav2Vec2Featurizer("group_norm", conv_bias=False)
    path = tmp_path / "base.pt"
    torch.save({"state_dict": base.state_dict()}, path)
    loaded = build_featurizer("wav2vec2", str(path))
    assert loaded.norm_mode == "group_norm" and loaded.context_frames is None
    audio = stereo(0.2)
    assert torch.equal(loaded(audio), base(audio))


def test_clear_errors(tmp_path, wav2vec2):
    with pytest.raises(ConfigError, match="unknown featurizer 'hubert'.*mel"):
        build_featurizer("hubert")
    with pytest.raises(ConfigError, match="'wav2vec2' needs a local weights file"):
        build_featurizer("wav2vec2")
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ConfigError, match=f"{missing}: featurizer weights file not found"):
        build_featurizer("wav2vec2", str(missing))
    with pytest.raises(ConfigError, match="'mel' needs no weights"):
        build_featurizer("mel", "w.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=f"{garbage}: cannot read"):
        build_featurizer("wav2vec2", str(garbage))
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"linear.weight": torch.zeros(2, 2)}, unrelated)
    with pytest.raises(ConfigError, match=f"{unrelated}: no wav2vec2 feature-extractor weights"):
        build_featurizer("wav2vec2", str(unrelated))
    truncated = tmp_path / "truncated.pt"
    state = wav2vec2.extractor.state_dict()
    state.pop("conv_layers.6.conv.weight")
    torch.save(state, truncated)
    with pytest.raises(ConfigError, match=f"{truncated}: not a wav2vec2 conv feature extractor"):
        build_featurizer("wav2vec2", str(truncated))


def test_bad_audio_shapes_are_refused():
    mel = build_featurizer("mel")
    with pytest.raises(ValueError, match="stereo"):
        mel(torch.zeros(1, 4800))
    with pytest.raises(ValueError, match="at least 480"):
        mel(torch.zeros(1, 479, 2))
