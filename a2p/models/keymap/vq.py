"""The released VQ-VAE checkpoint (`vq/c1_vq/net_iter300000.pth`) onto a2p's `BodyVQ`.

Use:

    state = read_vq_checkpoint(path)                  # the file -> a2p tensors, checked
    vq = BodyVQ(vq_preset("paper"))
    vq.load_state_dict(state, strict=True)

or, with the file's dict already in hand (`load_torch_file(path, allow=VQ_FILE_GLOBALS)`, or a
bare `TemporalVertexCodec.state_dict()`): `convert_vq(container_or_state, source=str(path))`.
Both raise `DataError` naming `source` for anything but the reference's VQ: another released
file (a guide `{iteration, model_state_dict, ...}`, a diffusion state dict, ...), a tensor no rule
maps, a missing tensor, or a shape that is not the `paper` VQ's (or the `config` given).

The file is `torch.save({'net': net.state_dict(), 'optimizer': optimizer.state_dict(),
'scheduler': scheduler})` (the reference's train/train_vq.py:157-165): the scheduler is pickled
as an object, a `MultiStepLR` holding its `AdamW` with a `defaultdict` of state. `VQ_FILE_GLOBALS`
lets `weights_only` loading read it by standing inert placeholders in for those names: nothing of
torch.optim is built or run, and the optimizer and scheduler are thrown away.

Key map (the reference's `TemporalVertexCodec` -> `BodyVQ`):

    encoder.enc.{0,2,4,6,8}.*                    -> encoder.convs.{0..4}.*  (odd indices: LeakyReLUs)
    decoder.dec.{0,2,4,6,8}.*                    -> decoder.convs.{0..4}.*
    quantizer.layers.l._codebook.embed           -> quantizer.codebooks.l.embed
    quantizer.layers.l._codebook.embed_avg       -> quantizer.codebooks.l.embed_sum  (the same EMA of sums)
    quantizer.layers.l._codebook.cluster_size    -> quantizer.codebooks.l.cluster_size
    quantizer.layers.l._codebook.inited (1,) 0/1 -> quantizer.codebooks.l.initialized () bool
    decoder.project_mean_shape.*                 -> unused (built by the reference, never called)

A codebook saved with `inited` 0 would be k-means initialised by the reference's eval-mode
`forward` on its first batch; a2p's eval mode never learns. Every released codebook is initialised.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from a2p.config.vq import VQConfig, vq_preset
from a2p.errors import DataError
from a2p.models.keymap import KeyMap, check_complete, rename
from a2p.models.torch_files import load_torch_file
from a2p.models.vq import BodyVQ

WHAT = "the reference's VQ checkpoint ({'net', 'optimizer', 'scheduler'} of a TemporalVertexCodec)"
"""What a VQ file should hold, as the error messages say it."""

_CONV_INDEX = {str(2 * i): str(i) for i in range(5)}
"""`nn.Sequential` index of a conv (convs and LeakyReLUs alternate) -> a2p's conv index."""

VQ_KEYMAP = KeyMap(
    rules=(
        *((rf"encoder\.enc\.{s}\.(weight|bias)", rf"encoder.convs.{a}.\1") for s, a in _CONV_INDEX.items()),
        *((rf"decoder\.dec\.{s}\.(weight|bias)", rf"decoder.convs.{a}.\1") for s, a in _CONV_INDEX.items()),
        (r"quantizer\.layers\.(\d+)\._codebook\.embed", r"quantizer.codebooks.\1.embed"),
        (r"quantizer\.layers\.(\d+)\._codebook\.embed_avg", r"quantizer.codebooks.\1.embed_sum"),
        (r"quantizer\.layers\.(\d+)\._codebook\.cluster_size", r"quantizer.codebooks.\1.cluster_size"),
        (r"quantizer\.layers\.(\d+)\._codebook\.inited", r"quantizer.codebooks.\1.initialized"),
    ),
    unused=(r"decoder\.project_mean_shape\.(weight|bias)",),
)
"""Every tensor of the reference's `TemporalVertexCodec` state dict."""

_SIGNATURE = "quantizer.layers.0._codebook.embed"
"""A key only the reference's VQ state dict has."""


class _Discarded:
    """What the pickled optimizer and scheduler objects become: an empty object; their state is dropped."""

    def __setstate__(self, state: Any) -> None:
        return None


def _plain_dict(*args: Any) -> dict:
    """Stands in for `collections.defaultdict(dict)` (the optimizer's state): an empty dict to fill."""
    return {}


VQ_FILE_GLOBALS: tuple[Any, ...] = (
    (_Discarded, "torch.optim.lr_scheduler.MultiStepLR"),
    (_Discarded, "torch.optim.adamw.AdamW"),
    (_plain_dict, "collections.defaultdict"),
    dict,  # the defaultdict's default factory
)
"""The `allow` of `load_torch_file` for the VQ file: inert stand-ins for its pickled scheduler."""


def read_vq_checkpoint(path: str | Path, config: VQConfig | None = None) -> dict[str, Tensor]:
    """The released VQ file at `path` as `BodyVQ` tensors (`config`: default the `paper` VQ)."""
    container = load_torch_file(path, allow=VQ_FILE_GLOBALS, what=WHAT)
    return convert_vq(container, str(path), config)


def convert_vq(
    container_or_state: Mapping[str, Any], source: str, config: VQConfig | None = None
) -> dict[str, Tensor]:
    """The VQ container (or its bare `net` state dict) as the tensors of `BodyVQ(config)`.

    `config` defaults to the `paper` VQ (4 x 1024 x 64, 104 -> 64 convs), the released one.
    Raises `DataError` naming `source` when the dict is not the reference's VQ or does not fit.
    """
    state = _net_state(container_or_state, source)
    out = rename(state, VQ_KEYMAP, source)
    for key in [k for k in out if k.endswith(".initialized")]:
        out[key] = out[key].reshape(()) != 0  # the reference's float flag (1,) -> a2p's bool ()
    expected = _expected_shapes(config or vq_preset("paper"))
    check_complete(out, expected, source)
    wrong = [
        f"{key} {tuple(out[key].shape)} (expected {shape})"
        for key, shape in expected.items()
        if tuple(out[key].shape) != shape
    ]
    if wrong:
        raise DataError(f"{source}: not the shapes of this VQ: {', '.join(wrong[:6])}")
    return out


def _net_state(container: Mapping[str, Any], source: str) -> Mapping[str, Tensor]:
    """The `TemporalVertexCodec` state dict of a release container, or the bare state dict itself."""
    if not isinstance(container, Mapping):
        raise DataError(f"{source}: holds a {type(container).__name__}, not {WHAT}")
    if _is_vq_state(container):
        return container
    if "net" in container:
        if _is_vq_state(container["net"]):
            return container["net"]
        raise DataError(
            f"{source}: its 'net' is not a TemporalVertexCodec state dict (it holds {describe_container(container['net'])}); expected {WHAT}"
        )
    raise DataError(f"{source}: not {WHAT}: it holds {describe_container(container)}")


def _is_vq_state(state: Any) -> bool:
    return (
        isinstance(state, Mapping)
        and _SIGNATURE in state
        and all(isinstance(v, Tensor) for v in state.values())
    )


def describe_container(obj: Any) -> str:
    """What a foreign dict most likely is, for the error message."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    keys = sorted(map(str, obj))
    shown = "{" + ", ".join(repr(k) for k in keys[:6]) + (", ..." if len(keys) > 6 else "") + "}"
    if "model_state_dict" in obj and "iteration" in obj:
        return f"a guide checkpoint {shown} (train_guide.py's container)"
    if keys == ["model_state_dict"]:
        return f"{shown}, as the lip regressor's assets/iter-0200000.pt"
    if "model" in obj and ("args" in obj or "cfg" in obj):
        return f"a fairseq checkpoint {shown}"
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        prefixes = sorted({k.split(".", 1)[0] for k in keys})
        kind = " of a diffusion model (FiLMTransformer)" if "seqTransDecoder" in prefixes else ""
        return f"a bare state dict{kind} of {len(keys)} tensors with prefixes {', '.join(prefixes[:8])}"
    return f"a dict with keys {shown}"


def _expected_shapes(config: VQConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `BodyVQ(config)`'s state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = BodyVQ(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
