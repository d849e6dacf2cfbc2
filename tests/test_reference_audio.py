"""The reference's frozen audio front end: vq-wav2vec features, the lip regressor, the 2038-dim face condition.

Golden arrays (`fixtures/reference/audio.npz`, `lip.npz`) were made by
`tests/fixtures/reference/make_audio.py`, which ran the reference's own code
(facebookresearch/audio2photoreal at 449761e754009afebd932caf66a00c682c603722:
`FiLMTransformer.encode_audio`, `FiLMTransformer.encode_lip`, `Audio2LipRegressionTransformer`)
with fairseq v0.12.2's own wav2vec 1.0 files (`fairseq/models/wav2vec/wav2vec.py` and its modules,
under a minimal stand-in package) in float64, on the weights `seeded_state_dict` draws from the
committed key lists (`audio.keys.json`: the face checkpoint's `audio_model.*` and
`audio_resampler.kernel`; `lip.keys.json`: the lip regressor), with the resampler kernels and
sinusoidal tables at their real values. Here the same weights go through a2p's key maps into
a2p's modules (strict), whose kernels and tables are a2p's own.
"""

from __future__ import annotations

from argparse import Namespace

import pytest
import torch

from a2p.errors import DataError
from a2p.models.lip import (
    LIP_CHUNK_FRAMES,
    LIP_DIM,
    face_audio_condition,
    lip_regressor_from_state,
    load_lip_regressor,
    sinusoidal_table,
)
from a2p.models.wav2vec1 import (
    VQ_WAV2VEC_FEATURE_LAYERS,
    ConvFeatureExtractor,
    VQWav2VecFeatures,
    resample_kernel,
    vq_wav2vec_frames,
)
from a2p.models.wav2vec1_files import (
    architecture_from_fairseq_args,
    check_resample_kernel,
    load_vq_wav2vec_features,
    load_wav2vec1_asset,
    vq_wav2vec_features_from_state,
)
from tests.reference_weights import (
    assert_close_to_golden,
    read_golden,
    seeded_array,
    seeded_front_end,
)

# As in make_audio.py.
AUDIO_SEED, LIP_SEED = 1, 2
AUDIO_INPUT_SEED, LIP_INPUT_SEED = 3, 4
AUDIO_BATCH, AUDIO_FRAMES = 2, 48
LIP_BATCH, LIP_FRAMES = 1, 150
SAMPLES_PER_FRAME = 1600
FEATURE_STEP, VERTEX_STEP, CONDITION_STEP = 16, 13, 64
PE_ROWS = [0, 1, 511, 1023]


@pytest.fixture(scope="module")
def audio_state() -> dict[str, torch.Tensor]:
    return seeded_front_end("audio", AUDIO_SEED)


@pytest.fixture(scope="module")
def lip_state() -> dict[str, torch.Tensor]:
    return seeded_front_end("lip", LIP_SEED)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vq_wav2vec_features_match_reference(audio_state, dtype):
    golden = read_golden("audio")
    state = {k: v.to(dtype) for k, v in audio_state.items()}
    features = vq_wav2vec_features_from_state(state, "seeded audio_model")
    audio = seeded_array((AUDIO_BATCH, AUDIO_FRAMES * SAMPLES_PER_FRAME, 2), AUDIO_INPUT_SEED).to(dtype)
    out = features(audio)  # (B, F, 1024)
    assert out.dtype == dtype and out.shape[1] == int(golden["frames"]) == features.output_frames(
        audio.shape[1]
    )
    assert_close_to_golden(out[:, :, ::FEATURE_STEP], golden["features"], f"vq-wav2vec features ({dtype})")


def test_lip_vertices_and_face_condition_match_reference(audio_state, lip_state):
    """150 frames in float64: a 120-frame chunk and a 30-frame one, then nearest-exact onto 498 feature frames."""
    golden = read_golden("lip")
    features = vq_wav2vec_features_from_state(audio_state, "seeded audio_model")
    regressor = lip_regressor_from_state(lip_state, "seeded lip_model")
    chunks: list[torch.Tensor] = []
    regressor.register_forward_hook(lambda module, args, out: chunks.append(out))
    audio = seeded_array((LIP_BATCH, LIP_FRAMES * SAMPLES_PER_FRAME, 2), LIP_INPUT_SEED)
    condition = face_audio_condition(features, regressor, audio)
    assert [c.shape[1] for c in chunks] == [LIP_CHUNK_FRAMES, LIP_FRAMES - LIP_CHUNK_FRAMES]
    vertices = torch.cat(chunks, dim=1)  # (B, T, 338, 3)
    assert_close_to_golden(vertices[0, :, ::VERTEX_STEP], golden["vertices"], "lip vertices")
    assert list(condition.shape) == golden["condition_shape"].tolist() == [LIP_BATCH, 498, 1024 + LIP_DIM]
    assert_close_to_golden(condition[0, :, ::CONDITION_STEP], golden["condition"], "face condition")


def test_lip_regressor_float32(lip_state):
    """The last (30-frame) chunk alone, in float32: the reference ran it as a separate input too."""
    golden = read_golden("lip")
    regressor = lip_regressor_from_state({k: v.float() for k, v in lip_state.items()}, "seeded lip_model")
    audio = seeded_array((LIP_BATCH, LIP_FRAMES * SAMPLES_PER_FRAME, 2), LIP_INPUT_SEED).float()
    chunk = audio.reshape(LIP_BATCH, LIP_FRAMES, SAMPLES_PER_FRAME, 2)[:, LIP_CHUNK_FRAMES:, :, 0]
    vertices = regressor(chunk)  # (B, 30, 338, 3)
    assert vertices.dtype == torch.float32
    expected = golden["vertices"][LIP_CHUNK_FRAMES:]
    assert_close_to_golden(vertices[0, :, ::VERTEX_STEP], expected, "lip vertices (float32)")


def test_buffers_equal_the_reference_bit_for_bit():
    assert torch.equal(
        resample_kernel().reshape(-1).double(), torch.from_numpy(read_golden("audio")["resample_kernel"])
    )
    assert torch.equal(
        sinusoidal_table(1024, 512)[PE_ROWS].double(), torch.from_numpy(read_golden("lip")["pe_rows"])
    )


def test_600_motion_frames_give_1998_feature_frames():
    assert vq_wav2vec_frames(600) == 1998
    narrow = ConvFeatureExtractor([(4, k, s) for _, k, s in VQ_WAV2VEC_FEATURE_LAYERS], "gelu", False)
    features = VQWav2VecFeatures(narrow)
    out = features(torch.zeros(1, 600 * SAMPLES_PER_FRAME, 2))
    assert out.shape == (1, 1998, 8) == (1, features.output_frames(600 * SAMPLES_PER_FRAME), 8)


def test_the_waveform_is_normalized_in_the_audio_dtype():
    from reference_weights import FIXTURES

    from a2p.data.person_stats import load_person_stats

    stats = load_person_stats(FIXTURES / "GQS883_data_stats.pth")
    out = stats.normalize_audio(torch.ones(1, 4, 2))
    expected = (1 - torch.from_numpy(stats.audio_mean)) / torch.from_numpy(stats.audio_std_flat)
    assert out.dtype == torch.float32 and torch.equal(out[0, 0], expected)


def test_fairseq_args_give_the_architecture():
    vq = architecture_from_fairseq_args(
        Namespace(arch="wav2vec", activation="gelu", log_compression=False, vq_type="gumbel"), "vq.pt"
    )
    assert (vq.activation, vq.log_compression, vq.aggregator_skip_connections) == ("gelu", False, True)
    # 2019 args lack `activation`: fairseq 0.12.2 fills in relu; the old expression form parses too
    large = architecture_from_fairseq_args(
        Namespace(
            arch="wav2vec", log_compression=True, conv_feature_layers="[(512, 10, 5)] + [(512, 4, 2)] * 3"
        ),
        "large.pt",
    )
    assert large.activation == "relu" and large.feature_layers == ((512, 10, 5),) + ((512, 4, 2),) * 3
    with pytest.raises(DataError, match="gru.pt"):
        architecture_from_fairseq_args(Namespace(aggregator="gru"), "gru.pt")
    with pytest.raises(DataError, match=r"bad\.pt: cannot read conv_feature_layers"):
        architecture_from_fairseq_args(Namespace(conv_feature_layers="__import__('os')"), "bad.pt")


def _constant_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors of the right shapes that cost nothing to save (one stored value each),
    keeping the buffers that are checked on loading."""
    out = {}
    for i, (key, tensor) in enumerate(state.items()):
        keep = key.endswith(("resampler.kernel", "positional_encoding.pe"))
        out[key] = (
            tensor.float() if keep else torch.full((), float(i), dtype=torch.float32).expand(tensor.shape)
        )
    return out


def test_load_from_release_containers(tmp_path, audio_state, lip_state):
    audio, lip = _constant_state(audio_state), _constant_state(lip_state)
    face = tmp_path / "model000155000.pt"
    torch.save(
        {**audio, **{f"lip_model.{k}": v for k, v in lip.items()}, "input_projection.weight": torch.zeros(2)},
        face,
    )
    iteration = tmp_path / "iter-0200000.pt"
    torch.save({"model_state_dict": lip}, iteration)

    features = load_vq_wav2vec_features(face)
    assert features.feature_extractor.conv_layers[7][2].bias.dtype == torch.float32
    assert float(features.feature_extractor.conv_layers[7][2].bias[0]) == float(
        audio["audio_model.feature_extractor.conv_layers.7.2.bias"][0]
    )
    for path in (face, iteration):
        regressor = load_lip_regressor(path)
        assert float(regressor.to_vertices.bias[0]) == float(lip["project_output.bias"][0])
        assert len(regressor.audio_encoder.wav2vec.feature_extractor.conv_layers) == 7  # wav2vec large

    asset = tmp_path / "vq-wav2vec.pt"
    model = {k.removeprefix("audio_model."): v for k, v in audio.items() if k.startswith("audio_model.")}
    torch.save(
        {"args": Namespace(arch="wav2vec", activation="gelu", log_compression=False), "model": model}, asset
    )
    wav2vec = load_wav2vec1_asset(asset)
    assert isinstance(wav2vec.feature_extractor.conv_layers[0][3], torch.nn.GELU)
    assert not wav2vec.feature_extractor.log_compression and wav2vec.feature_aggregator is not None
    assert load_vq_wav2vec_features(asset).dim == 1024


def test_loading_errors_name_the_file(tmp_path, audio_state):
    audio = _constant_state(audio_state)
    truncated = tmp_path / "truncated.pt"
    torch.save({"x": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.pt"):
        load_vq_wav2vec_features(truncated)

    vq_checkpoint = tmp_path / "net_iter300000.pth"
    torch.save({"net": {"encoder.enc.0.weight": torch.zeros(2)}}, vq_checkpoint)
    with pytest.raises(DataError, match=r"net_iter300000\.pth: holds no vq-wav2vec weights"):
        load_vq_wav2vec_features(vq_checkpoint)
    with pytest.raises(DataError, match=r"net_iter300000\.pth: holds neither"):
        load_lip_regressor(vq_checkpoint)

    with pytest.raises(
        DataError, match=r"extra\.pt: 1 tensor\(s\) no rule maps: audio_model\.feature_extractor\.extra"
    ):
        vq_wav2vec_features_from_state(
            {**audio, "audio_model.feature_extractor.extra": torch.zeros(1)}, "extra.pt"
        )
    missing = {k: v for k, v in audio.items() if k != "audio_model.feature_extractor.conv_layers.3.2.bias"}
    with pytest.raises(DataError, match=r"missing\.pt: does not hold this model's weights \(missing 1"):
        vq_wav2vec_features_from_state(missing, "missing.pt")
    with pytest.raises(DataError, match="kernel.pt"):
        check_resample_kernel(resample_kernel() * 1.01, "kernel.pt")
