"""Released Audio2Photoreal containers: recognized by what they hold, converted strictly, refused by name.

The containers are built here as the release stores them (FIDELITY.md §3.1), with seeded tensors
of the reference's key/shape lists (`tests/fixtures/reference/*.keys.json`, written from its own
classes by the fixture scripts), plus the frozen audio front end's keys and the rotary buffers.
"""

from __future__ import annotations

import pytest
import torch
from reference_weights import read_keys, seeded_state_dict

from a2p.config.denoiser import denoiser_preset
from a2p.config.guide import guide_preset
from a2p.errors import DataError
from a2p.models.denoiser import Denoiser
from a2p.models.guide import GuideTransformer
from a2p.models.keymap.release import convert_release, identify

FRONT_END = {"audio_model.feature_extractor.conv_layers.0.0.weight": torch.zeros(512, 1, 10)}


def diffusion_file(name: str) -> dict:
    state = seeded_state_dict(read_keys(f"denoiser_{name}"), 0)
    state["rotary.freqs"] = torch.zeros(256)
    state["seqTransDecoder.stack.0.rotary.freqs"] = torch.zeros(256)
    return state | FRONT_END


def guide_file() -> dict:
    state = seeded_state_dict(read_keys("guide"), 0) | FRONT_END | {"rotary.freqs": torch.zeros(32)}
    return {"iteration": 100_000, "model_state_dict": state, "optimizer_state_dict": {}}


@pytest.mark.parametrize("name", ["face", "body"])
def test_diffusion_files_convert_to_the_released_architecture(name):
    converted = convert_release(diffusion_file(name), name, f"{name}.pt")
    config = converted.config
    assert (config.width, config.layers, config.audio_dim) == {
        "face": (512, 8, 2038),
        "body": (256, 6, 1024),
    }[name]
    assert config.positions == "reference" and config.null_audio_tokens == 1998
    assert config == denoiser_preset(name, "paper")  # the paper preset is the released architecture
    assert config.guide_dim == (104 if name == "body" else 0)
    Denoiser(config).load_state_dict(converted.tensors, strict=True)
    assert list(converted.audio) == list(FRONT_END)


def test_guide_file_converts():
    converted = convert_release(guide_file(), "guide", "guide.pt")
    c = converted.config
    assert (c.width, c.layers, c.codes, c.audio_dim, len(c.audio_dilations)) == (64, 6, 1024, 1024, 12)
    GuideTransformer(c).load_state_dict(converted.tensors, strict=True)
    assert c == guide_preset("paper")


def test_wrong_files_are_refused_by_what_they_hold():
    with pytest.raises(
        DataError, match=r"body\.pt: holds the body diffusion model, not the face diffusion model"
    ):
        convert_release(diffusion_file("body"), "face", "body.pt")
    with pytest.raises(
        DataError, match=r"vq\.pth: holds the body VQ-VAE checkpoint, not the guide transformer"
    ):
        convert_release({"net": {"quantizer.layers.0._codebook.embed": torch.zeros(1)}}, "guide", "vq.pth")
    with pytest.raises(
        DataError, match=r"x\.pt: holds a bare state dict of 1 tensors with prefixes hello, not the body"
    ):
        convert_release({"hello": torch.zeros(1)}, "body", "x.pt")
    assert identify({"model_state_dict": {"regression_model.x": torch.zeros(1)}}) == "lip"


def test_an_unknown_tensor_is_refused():
    state = diffusion_file("face") | {"extra_head.weight": torch.zeros(1)}
    with pytest.raises(DataError, match=r"face\.pt: 1 tensor\(s\) no rule maps: extra_head\.weight"):
        convert_release(state, "face", "face.pt")
