"""The four released Audio2Photoreal files, recognized by what they hold and converted to a2p.

Containers (FIDELITY.md §3.1): the face and body diffusion files are bare `state_dict`s, the
guide file is `{iteration, model_state_dict, optimizer_state_dict}`, the VQ file `{net, optimizer,
scheduler}`. `identify` names what a loaded file holds, so a file given for the wrong model is
refused saying what it is; `convert_release` turns one into a2p's model config and tensors, with
the frozen audio front end (vq-wav2vec, and the face's lip regressor) kept apart for the
featurizer. Architecture sizes are read from the tensors' shapes; the head counts, which no
tensor records, are the released models' (8 for the denoisers, 4 for the guide).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from a2p.config.denoiser import DenoiserConfig
from a2p.config.guide import GuideConfig
from a2p.errors import DataError
from a2p.models.keymap.denoiser import convert_denoiser, split_audio
from a2p.models.keymap.guide import MODULES_PER_CONV, convert_guide
from a2p.models.keymap.vq import describe_container

RELEASED_HEADS = {"face": 8, "body": 8, "guide": 4}
"""Attention heads of the released models (utils/model_util.py, model/guide.py defaults)."""
CONV_HEAD_DILATIONS = (1, 2, 3, 1, 2, 3)
"""The body's conv head and each block of the guide's audio convs (the reference's)."""


@dataclass
class Converted:
    """One released model in a2p's terms."""

    name: str
    """face, body or guide."""
    config: Any
    """Its a2p model config (reference positions, positional null tokens)."""
    tensors: dict[str, Tensor]
    """The a2p model's state dict."""
    audio: dict[str, Tensor]
    """The frozen audio front end's tensors, with the reference's prefixes (`audio_model.`, ...)."""


def identify(container: Any) -> str:
    """What a loaded released file holds: face, body, guide, vq, lip (the lip asset), or a description."""
    if not isinstance(container, Mapping):
        return describe_container(container)
    if "net" in container and isinstance(container["net"], Mapping):
        if any(str(k).startswith("quantizer.") for k in container["net"]):
            return "vq"
    if "model_state_dict" in container and isinstance(container["model_state_dict"], Mapping):
        inner = container["model_state_dict"]
        if "token_embedding.weight" in inner:
            return "guide"
        if any(str(k).startswith("regression_model.") for k in inner):
            return "lip"
    keys = [k for k in container if isinstance(k, str)]
    if "seqTransDecoder.stack.0.self_attn.in_proj_weight" in keys:
        if "null_pose_embed" in keys:
            return "body"
        if any(k.startswith("cond_encoder.") for k in keys):
            return "face"
    return describe_container(container)


DESCRIPTIONS = {
    "face": "the face diffusion model",
    "body": "the body diffusion model",
    "guide": "the guide transformer checkpoint",
    "vq": "the body VQ-VAE checkpoint",
    "lip": "the lip regressor asset (iter-0200000.pt)",
}


def expect(container: Any, name: str, source: str) -> None:
    """Raise `DataError` naming `source` unless the container holds the released `name` model."""
    found = identify(container)
    if found != name:
        what = DESCRIPTIONS.get(found, found)
        raise DataError(f"{source}: holds {what}, not {DESCRIPTIONS[name]}")


def _count(keys: list[str], pattern: str) -> int:
    indices = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def convert_release(container: Mapping[str, Any], name: str, source: str) -> Converted:
    """The released face, body or guide file (loaded) as a2p config + tensors; strict."""
    expect(container, name, source)
    state = container["model_state_dict"] if name == "guide" else container
    model_state, audio = split_audio(state)
    keys = list(model_state)
    if name == "guide":
        width = model_state["token_embedding.weight"].shape[1]
        convs = _count(keys, r"pre_audio\.(\d+)\.") // MODULES_PER_CONV
        config = GuideConfig(
            codes=model_state["final_layer.weight"].shape[0],
            audio_dim=model_state["pre_audio.0.weight"].shape[1],
            width=width,
            layers=_count(keys, r"seqTransDecoder\.stack\.(\d+)\."),
            heads=RELEASED_HEADS["guide"],
            ff_dim=model_state["seqTransDecoder.stack.0.linear1.weight"].shape[0],
            audio_width=model_state["pre_audio.0.weight"].shape[0],
            audio_dilations=CONV_HEAD_DILATIONS * (convs // len(CONV_HEAD_DILATIONS)),
            positions="reference",
            audio_padding="valid",
            level_embedding=False,
            out_norm=False,
            null_audio_tokens=model_state["null_cond_embed"].shape[1],
        )
        tensors = convert_guide(model_state, convs, source)
    else:
        guided = name == "body"
        config = DenoiserConfig(
            motion_dim=model_state["input_projection.weight"].shape[1],
            audio_dim=model_state["cond_projection.weight"].shape[1],
            width=model_state["input_projection.weight"].shape[0],
            layers=_count(keys, r"seqTransDecoder\.stack\.(\d+)\."),
            heads=RELEASED_HEADS[name],
            ff_dim=model_state["seqTransDecoder.stack.0.linear1.weight"].shape[0],
            audio_encoder_layers=_count(keys, r"cond_encoder\.(\d+)\."),
            guide_dim=model_state["frame_cond_projection.weight"].shape[1] if guided else 0,
            conv_head_dilations=CONV_HEAD_DILATIONS if guided else (),
            conv_head_width=model_state["post_pose_layers.0.weight"].shape[0] if guided else 256,
            positions="reference",
            null_audio_tokens=model_state["null_cond_embed"].shape[1],
            null_guide_tokens=model_state["null_pose_embed"].shape[1] if guided else 1,
        )
        tensors = convert_denoiser(model_state, source)
    return Converted(name, dataclasses.replace(config), tensors, audio)
