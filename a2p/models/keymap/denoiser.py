"""The released face and body diffusion checkpoints (`FiLMTransformer` state dicts) onto `Denoiser`.

The released files are bare `model.state_dict()`s (`diffusion/c1_face/model000155000.pt`,
`diffusion/c1_pose/model000340000.pt`). Besides the denoiser they carry the frozen audio front
end (`audio_model.*` vq-wav2vec, `audio_resampler.kernel`, and for the face `lip_model.*`): those
prefixes are split off by `split_audio` for the featurizer's own loader. The rotary frequency
buffers (`rotary.freqs`, repeated under every layer) are recomputed by a2p.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from a2p.models.keymap import KeyMap, rename, split_attention

AUDIO_PREFIXES = ("audio_model.", "audio_resampler.", "lip_model.")
"""Tensors of the frozen audio front end inside a released diffusion (or guide) checkpoint."""

DECODER_LAYER_PARTS = (
    (r"self_attn\.(.*)", r"self_attention.\1"),
    (r"multihead_attn\.(.*)", r"cross_attention.0.\1"),
    (r"multihead_attn2\.(.*)", r"cross_attention.1.\1"),
    (r"norm1\.(.*)", r"norm_self.\1"),
    (r"norm2\.(.*)", r"norm_cross.0.\1"),
    (r"norm2a\.(.*)", r"norm_cross.1.\1"),
    (r"norm3\.(.*)", r"norm_ff.\1"),
    (r"film1\.block\.1\.(.*)", r"film_self.to_scale_shift.1.\1"),
    (r"film2\.block\.1\.(.*)", r"film_cross.0.to_scale_shift.1.\1"),
    (r"film2a\.block\.1\.(.*)", r"film_cross.1.to_scale_shift.1.\1"),
    (r"film3\.block\.1\.(.*)", r"film_ff.to_scale_shift.1.\1"),
    (r"linear1\.(.*)", r"ff.net.0.\1"),
    (r"linear2\.(.*)", r"ff.net.3.\1"),
)
"""One `FiLMTransformerDecoderLayer` (reference) as a `FiLMDecoderLayer` (a2p)."""

ENCODER_LAYER_PARTS = (
    (r"self_attn\.(.*)", r"attn.\1"),
    (r"norm1\.(.*)", r"norm_attn.\1"),
    (r"norm2\.(.*)", r"norm_ff.\1"),
    (r"linear1\.(.*)", r"ff.net.0.\1"),
    (r"linear2\.(.*)", r"ff.net.3.\1"),
)
"""One `TransformerEncoderLayerRotary` (reference) as a `TransformerEncoderLayer` (a2p)."""


def numbered(prefix: str, target: str, parts: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Rules for numbered sub-modules `prefix.i.<part>` -> `target.i.<renamed part>`."""
    return tuple(
        (rf"{prefix}\.(\d+)\.{pattern}", rf"{target}.\1." + template.replace("\\1", "\\2"))
        for pattern, template in parts
    )


DENOISER_KEYMAP = KeyMap(
    rules=(
        (r"input_projection\.(.*)", r"motion_in.\1"),
        (r"time_mlp\.1\.(.*)", r"time_embedding.proj.0.\1"),
        (r"to_time_cond\.0\.(.*)", r"time_to_film.\1"),
        (r"to_time_tokens\.0\.(.*)", r"time_to_tokens.\1"),
        (r"cond_projection\.(.*)", r"audio_in.\1"),
        (r"non_attn_cond_projection\.([013])\.(.*)", r"audio_pool.\1.\2"),
        (r"norm_cond\.(.*)", r"memory_norm.\1"),
        (r"null_cond_hidden", r"null_pooled"),
        (r"null_cond_embed", r"null_audio"),
        (r"null_pose_embed", r"null_guide"),
        (r"frame_cond_projection\.(.*)", r"guide_in.\1"),
        (r"frame_norm_cond\.(.*)", r"guide_norm.\1"),
        (r"final_layer\.(.*)", r"motion_out.\1"),
        (r"post_pose_layers\.(\d+)\.(.*)", r"conv_head.convs.\1.\2"),
        (r"final_conv\.(.*)", r"conv_out.\1"),
        *numbered(r"cond_encoder", "audio_encoder", ENCODER_LAYER_PARTS),
        *numbered(r"seqTransDecoder\.stack", "layers", DECODER_LAYER_PARTS),
    ),
    unused=(r"(.*\.)?rotary\.freqs",),
)
"""Every tensor of the reference's `FiLMTransformer` but its audio front end."""


def split_audio(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the denoiser's tensors, the audio front end's tensors with their prefixes kept)."""
    model, audio = {}, {}
    for key, tensor in state.items():
        (audio if key.startswith(AUDIO_PREFIXES) else model)[key] = tensor
    return model, audio


def convert_denoiser(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """A released face or body state dict (audio front end split off) as `Denoiser` tensors."""
    return rename(split_attention(state), DENOISER_KEYMAP, source)
