"""a2p's `paper` denoisers compute the reference's `FiLMTransformer`, on its own weights.

Fixtures: `tests/fixtures/reference/make_denoiser.py` ran the reference's own classes
(facebookresearch/audio2photoreal at 9a5ed3a, model/diffusion.py, diffusion/respace.py,
model/cfg_sampler.py) once, on weights drawn by `reference_weights.seeded_state_dict` from the
committed key/shape list, in float64, and saved their outputs: x0 for several timesteps with
the condition kept and dropped, and a whole `ddim10` loop with classifier-free guidance (scale
2.5) from a given x_T (see the script's docstring for the two float64 adjustments). Here the
same weights are rebuilt, converted by a2p's key map, loaded strictly, and run through a2p.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference_weights import assert_close_to_golden, read_golden, read_keys, seeded_array, seeded_state_dict

from a2p.config.denoiser import denoiser_preset
from a2p.diffusion import sample
from a2p.errors import DataError
from a2p.models.denoiser import ConditionInputs, Denoiser
from a2p.models.keymap.denoiser import convert_denoiser, split_audio
from a2p.sampling.clip import clip_model
from a2p.sampling.settings import setting_schedule

FRAMES, AUDIO_FRAMES, KEYFRAMES, GUIDANCE = 45, 147, 2, 2.5
SEEDS = {"weights": 0, "x": 1, "audio": 2, "keyframes": 3, "noise": 4}
AUDIO_DIMS = {"face": 2038, "body": 1024}


def reference_config(name: str):
    """The released model's architecture: the paper preset (the reference's positions and
    positional null tokens, vq-wav2vec (+ lip) audio widths)."""
    config = denoiser_preset(name, "paper")
    assert (config.audio_dim, config.positions, config.null_audio_tokens) == (
        AUDIO_DIMS[name],
        "reference",
        1998,
    )
    return config


def reference_model(name: str, dtype: torch.dtype = torch.float64) -> Denoiser:
    weights = seeded_state_dict(read_keys(f"denoiser_{name}"), SEEDS["weights"])
    model = Denoiser(reference_config(name))
    model.load_state_dict(convert_denoiser(weights, f"seeded {name}"), strict=True)
    return model.to(dtype).eval()


def inputs(name: str, dtype: torch.dtype = torch.float64):
    dim = reference_config(name).motion_dim
    x = seeded_array((1, FRAMES, dim), SEEDS["x"]).to(dtype)
    audio = seeded_array((1, AUDIO_FRAMES, AUDIO_DIMS[name]), SEEDS["audio"]).to(dtype)
    guide = seeded_array((1, KEYFRAMES, dim), SEEDS["keyframes"]).to(dtype) if name == "body" else None
    return x, audio, guide


@pytest.mark.parametrize("name", ["face", "body"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_x0_matches_reference(name, dtype):
    golden = read_golden(f"denoiser_{name}")
    model = reference_model(name, dtype)
    x, audio, guide = inputs(name, dtype)
    with torch.no_grad():
        for key in [k for k in golden if k.startswith("x0_")]:
            _, step, label = key.split("_")
            keep = torch.tensor([label == "kept"])
            t = torch.tensor([int(step.removeprefix("t"))])
            out = model(x, t, ConditionInputs(audio, guide, keep_mask=keep))
            assert_close_to_golden(out, golden[key], f"{name} {key} {dtype}")


@pytest.mark.parametrize("name", ["face", "body"])
def test_ddim10_with_guidance_matches_reference(name):
    golden = read_golden(f"denoiser_{name}")["ddim10_cfg"]
    model = reference_model(name)
    _, audio, guide = inputs(name)
    dim = model.config.motion_dim
    x_T = seeded_array((1, dim, 1, FRAMES), SEEDS["noise"]).squeeze(2).transpose(1, 2)  # (1, T, D)
    _, schedule = setting_schedule("ddim10", torch.device("cpu"))
    with torch.no_grad():
        out = sample(clip_model(model, audio, guide, 1, GUIDANCE), schedule, noise=x_T, sampler="ddim")
    assert_close_to_golden(out, golden, f"{name} ddim10 CFG {GUIDANCE}")


def test_the_time_scheme_is_not_the_reference():
    """The check has teeth: a2p's own positions on the same weights miss the reference by far."""
    golden = read_golden("denoiser_face")["x0_t499_kept"]
    weights = seeded_state_dict(read_keys("denoiser_face"), SEEDS["weights"])
    model = Denoiser(dataclasses.replace(reference_config("face"), positions="time"))
    model.load_state_dict(convert_denoiser(weights, "seeded face"), strict=True)
    x, audio, _ = inputs("face")
    with torch.no_grad():
        out = model.double().eval()(x, torch.tensor([499]), ConditionInputs(audio))
    assert float((out - torch.from_numpy(golden)).abs().max()) > 1e-3


def test_key_map_is_strict():
    weights = seeded_state_dict(read_keys("denoiser_body"), SEEDS["weights"])
    weights["seqTransDecoder.stack.0.film9.block.1.weight"] = torch.zeros(1)
    with pytest.raises(
        DataError, match=r"body\.pt: 1 tensor\(s\) no rule maps: seqTransDecoder\.stack\.0\.film9"
    ):
        convert_denoiser(weights, "body.pt")
    model_part, audio_part = split_audio(
        {
            "audio_model.feature_extractor.conv_layers.0.0.weight": torch.zeros(1),
            "final_layer.bias": torch.zeros(1),
        }
    )
    assert list(model_part) == ["final_layer.bias"] and list(audio_part) == [
        "audio_model.feature_extractor.conv_layers.0.0.weight"
    ]


def test_positional_null_tokens_bound_the_window():
    model = Denoiser(dataclasses.replace(denoiser_preset("face", "debug"), null_audio_tokens=10))
    with pytest.raises(ValueError, match="11 audio features exceed the model's 10 positional null tokens"):
        model.null_condition(1, 11)
