"""The released guide checkpoint (`GuideTransformer`, `model_state_dict` of
`guide/c1_pose/checkpoints/iter-0100000.pt`) onto a2p's `GuideTransformer`.

The audio conv stack is a flat `nn.Sequential` there (conv, leaky ReLU, dropout per conv, then a
1x1 conv), so conv j is `pre_audio.{3 j}`. Like the diffusion files, the guide file carries the
frozen vq-wav2vec (`audio_model.*`, `audio_resampler.*`): split it off with
`a2p.models.keymap.denoiser.split_audio`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from a2p.models.keymap import KeyMap, rename, split_attention
from a2p.models.keymap.denoiser import DECODER_LAYER_PARTS, numbered

MODULES_PER_CONV = 3
"""Conv, leaky ReLU, dropout: the reference's `pre_audio` entries per audio conv."""


def guide_keymap(audio_convs: int) -> KeyMap:
    """The key map of a reference guide with `audio_convs` dilated convs before its 1x1 conv."""
    convs = tuple(
        (rf"pre_audio\.{MODULES_PER_CONV * j}\.(.*)", rf"audio_convs.convs.{j}.\1")
        for j in range(audio_convs)
    )
    return KeyMap(
        rules=(
            (r"token_embedding\.(.*)", r"token_embedding.\1"),
            (r"null_cond_embed", r"null_audio"),
            (r"null_cond_hidden", r"null_pooled"),
            (r"norm_cond\.(.*)", r"audio_norm.\1"),
            (r"cond_projection\.(.*)", r"audio_in.\1"),
            (r"non_attn_cond_projection\.([013])\.(.*)", r"pool_mlp.\1.\2"),
            *convs,
            (rf"pre_audio\.{MODULES_PER_CONV * audio_convs}\.(.*)", r"audio_convs.out.\1"),
            (r"final_layer\.(.*)", r"head.\1"),
            *numbered(r"seqTransDecoder\.stack", "layers", DECODER_LAYER_PARTS),
        ),
        unused=(r"(.*\.)?rotary\.freqs",),
    )


def convert_guide(state: Mapping[str, Tensor], audio_convs: int, source: str) -> dict[str, Tensor]:
    """A released guide state dict (audio front end split off) as a2p `GuideTransformer` tensors."""
    out = rename(split_attention(state), guide_keymap(audio_convs), source)
    if "null_pooled" in out:  # (1, W) there, (W,) in a2p
        out["null_pooled"] = out["null_pooled"].reshape(-1)
    return out
