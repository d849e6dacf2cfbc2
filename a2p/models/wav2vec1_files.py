"""Loading wav2vec 1.0 weights: fairseq's asset files and released audio2photoreal checkpoints.

Every file is read with the safe loader (`a2p.models.torch_files.load_torch_file`,
`weights_only`, with only fairseq's `argparse.Namespace` allowed beyond tensors), so no pickled
code runs. Two sources, two ways to learn the architecture:

- a fairseq file (`vq-wav2vec.pt`, `wav2vec_large.pt`: `{'args', 'model', ...}`,
  `load_wav2vec1_asset`): the flags come from its stored `args`, read as fairseq 0.12.2 reads
  them (`architecture_from_fairseq_args`; layer lists parsed without eval);
- the tensors under a prefix of a released checkpoint (`audio_model.*` and
  `audio_resampler.kernel` of the face, body and guide files, `wav2vec1_from_state`,
  `vq_wav2vec_features_from_state`): no args are stored there, so the flags come from a
  documented architecture (`a2p.models.wav2vec1.VQ_WAV2VEC`, `WAV2VEC_LARGE`) and the number of
  extractor layers from the tensors.

Either way every tensor must load, strictly, apart from parts no feature path uses (the
quantizer, the training-only predictor); a wrong file is a `DataError` naming it.
"""

from __future__ import annotations

import ast
import logging
import re
from argparse import Namespace
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from a2p.errors import DataError
from a2p.models.keymap import KeyMap, check_complete, rename
from a2p.models.torch_files import FAIRSEQ_GLOBALS, load_torch_file
from a2p.models.wav2vec1 import (
    VQ_WAV2VEC,
    VQ_WAV2VEC_FEATURE_LAYERS,
    WAV2VEC_AGGREGATOR_LAYERS,
    ConvSpec,
    VQWav2VecFeatures,
    Wav2Vec1,
    Wav2Vec1Architecture,
    build_wav2vec1,
    resample_kernel,
)

logger = logging.getLogger(__name__)


WAV2VEC_TENSOR = (
    r"(?:feature_extractor\.conv_layers\.\d+\.[02]\.(?:weight|bias)"
    r"|feature_aggregator\.conv_layers\.\d+\.[13]\.(?:weight|bias)"
    r"|feature_aggregator\.residual_proj\.\d+\.weight)"
)
"""A tensor name of `Wav2Vec1` (and of fairseq's wav2vec 1.0 extractor and aggregator)."""

UNUSED_WAV2VEC_KEYS = (r"vector_quantizer\..*", r"wav2vec_predictions\..*")
"""Parts of a fairseq wav2vec model no feature path uses (the quantizer, the training-only predictor)."""

_FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "conv_feature_layers": str(list(VQ_WAV2VEC_FEATURE_LAYERS)),
    "conv_aggregator_layers": str(list(WAV2VEC_AGGREGATOR_LAYERS)),
    "aggregator": "cnn",
    "activation": "relu",
    "log_compression": True,
    "skip_connections_feat": False,
    "skip_connections_agg": True,
    "residual_scale": 0.5,
    "non_affine_group_norm": False,
    "no_conv_bias": False,
    "agg_zero_pad": False,
}
"""What fairseq 0.12.2 (the reference installs fairseq unpinned) fills in for an option the stored
args lack: its `Wav2VecConfig` defaults, which differ from the argparse defaults of 2019."""


def architecture_from_fairseq_args(args: Namespace | Mapping[str, Any], source: str) -> Wav2Vec1Architecture:
    """The architecture a fairseq wav2vec 1.0 file's stored `args` describe (as fairseq 0.12.2 reads them)."""
    values = vars(args) if isinstance(args, Namespace) else dict(args)

    def get(name: str) -> Any:
        return values.get(name, _FAIRSEQ_DEFAULTS[name])

    arch = values.get("arch", "wav2vec")
    if arch != "wav2vec":
        raise DataError(f"{source}: a fairseq {arch!r} model, not wav2vec 1.0 (arch 'wav2vec')")
    if get("aggregator") != "cnn":
        raise DataError(f"{source}: aggregator {get('aggregator')!r} is not supported (only 'cnn')")
    activation = get("activation")
    if activation not in ("relu", "gelu"):
        raise DataError(f"{source}: unknown activation {activation!r} in the stored args")
    return Wav2Vec1Architecture(
        feature_layers=_conv_specs(get("conv_feature_layers"), "conv_feature_layers", source),
        aggregator_layers=_conv_specs(get("conv_aggregator_layers"), "conv_aggregator_layers", source),
        activation=activation,
        log_compression=bool(get("log_compression")),
        feature_skip_connections=bool(get("skip_connections_feat")),
        aggregator_skip_connections=bool(get("skip_connections_agg")),
        residual_scale=float(get("residual_scale")),
        affine_group_norm=not get("non_affine_group_norm"),
        aggregator_conv_bias=not get("no_conv_bias"),
        aggregator_zero_pad=bool(get("agg_zero_pad")),
    )


def _conv_specs(text: Any, name: str, source: str) -> tuple[ConvSpec, ...]:
    """Parse fairseq's layer-list expression, e.g. "[(512, 10, 5)] + [(512, 4, 2)] * 3", without eval."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Tuple | ast.List):
            items = [value(item) for item in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return value(node.left) * value(node.right)
        raise ValueError(ast.dump(node))

    try:
        specs = value(ast.parse(str(text), mode="eval").body) if isinstance(text, str) else text
        layers = tuple((int(c), int(k), int(s)) for c, k, s in specs)
    except (SyntaxError, ValueError, TypeError) as error:
        raise DataError(f"{source}: cannot read {name} = {text!r} ({error})") from None
    return layers


def load_wav2vec1_asset(path: str | Path, *, with_aggregator: bool = True) -> Wav2Vec1:
    """A fairseq wav2vec 1.0 file (`vq-wav2vec.pt`, `wav2vec_large.pt`: `{'args', 'model', ...}`).

    The architecture comes from the stored args; every tensor must load, apart from the quantizer
    and the predictor (and the aggregator when `with_aggregator` is False).
    """
    path = Path(path)
    stored = load_torch_file(path, allow=FAIRSEQ_GLOBALS, what=_ASSET)
    return wav2vec1_from_asset(stored, str(path), with_aggregator=with_aggregator)


_ASSET = "a fairseq wav2vec 1.0 file ({'args', 'model'})"


def wav2vec1_from_asset(stored: Mapping[str, Any], source: str, *, with_aggregator: bool = True) -> Wav2Vec1:
    """`load_wav2vec1_asset` on the already loaded contents `stored` of the file `source`."""
    if not isinstance(stored.get("model"), Mapping) or stored.get("args") is None:
        raise DataError(f"{source}: not {_ASSET}: holds {sorted(map(str, stored))[:8]}")
    arch = architecture_from_fairseq_args(stored["args"], source)
    if not with_aggregator:
        arch = replace(arch, aggregator_layers=())
    model = build_wav2vec1(arch)
    load_wav2vec1_weights(model, stored["model"], "", source)
    logger.info(
        "loaded wav2vec 1.0 (%s, log compression %s) from %s", arch.activation, arch.log_compression, source
    )
    return model


def wav2vec1_from_state(
    state: Mapping[str, Tensor], prefix: str, arch: Wav2Vec1Architecture, source: str
) -> Wav2Vec1:
    """A wav2vec 1.0 model from the tensors under `prefix` of a checkpoint that stores no args.

    `arch` gives the flags; how many extractor layers there are is read from the tensors
    (`stored_feature_layers`); with `arch.aggregator_layers == ()` the aggregator's tensors are
    knowingly skipped.
    """
    layers = stored_feature_layers(state, prefix, arch.feature_layers, source)
    model = build_wav2vec1(replace(arch, feature_layers=layers))
    load_wav2vec1_weights(model, state, prefix, source)
    return model


def stored_feature_layers(
    state: Mapping[str, Tensor], prefix: str, layers: Sequence[ConvSpec], source: str
) -> tuple[ConvSpec, ...]:
    """The leading part of `layers` whose convs `state` holds under `prefix` (kernel sizes checked).

    Strides cannot be read from a tensor; the released extractors share theirs (`layers`).
    """
    pattern = re.compile(re.escape(prefix) + r"feature_extractor\.conv_layers\.(\d+)\.0\.weight")
    shapes = {int(m[1]): tuple(t.shape) for key, t in state.items() if (m := pattern.fullmatch(key))}
    count = len(shapes)
    if count == 0 or sorted(shapes) != list(range(count)):
        raise DataError(f"{source}: no wav2vec 1.0 feature extractor under {prefix!r}")
    if count > len(layers):
        raise DataError(
            f"{source}: {count} feature-extractor layers under {prefix!r}, expected at most {len(layers)}"
        )
    for i, (channels, kernel, _) in enumerate(layers[:count]):
        if shapes[i][0] != channels or shapes[i][-1] != kernel:
            raise DataError(
                f"{source}: {prefix}feature_extractor.conv_layers.{i}.0.weight has shape {shapes[i]}, "
                f"expected ({channels}, _, {kernel})"
            )
    return tuple(layers[:count])


def load_wav2vec1_weights(model: Wav2Vec1, state: Mapping[str, Tensor], prefix: str, source: str) -> None:
    """Load the tensors under `prefix` into `model`, strictly; raises `DataError` naming `source`."""
    unused = list(UNUSED_WAV2VEC_KEYS)
    if model.feature_aggregator is None:
        unused.append(r"feature_aggregator\..*")
    keymap = KeyMap(rules=((f"({WAV2VEC_TENSOR})", r"\1"),), unused=tuple(unused))
    selected = {key[len(prefix) :]: tensor for key, tensor in state.items() if key.startswith(prefix)}
    converted = rename(selected, keymap, source)
    load_strict(model, converted, f"{source} ({prefix or 'top level'})")


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """`module.load_state_dict(state, strict=True)`, with missing/extra keys and shapes as `DataError`s.

    The module takes the stored dtype first (float32 for the released files), so a float64 state
    loads without rounding.
    """
    dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    if len(dtypes) == 1:
        module.to(dtypes.pop())
    expected = module.state_dict()
    check_complete(state, expected, source)
    wrong = [
        f"{key} {tuple(tensor.shape)} != {tuple(expected[key].shape)}"
        for key, tensor in state.items()
        if tuple(tensor.shape) != tuple(expected[key].shape)
    ]
    if wrong:
        raise DataError(f"{source}: tensors of the wrong shape: {', '.join(wrong[:4])}")
    module.load_state_dict(dict(state), strict=True)


# ---------------------------------------------------------------------------------------------
# The reference's audio features (FiLMTransformer.encode_audio)


def check_resample_kernel(kernel: Tensor, source: str, atol: float = 1e-6) -> None:
    """Raise `DataError` naming `source` unless a stored kernel is torchaudio's 48 kHz -> 16 kHz kernel."""
    expected = resample_kernel()
    if tuple(kernel.shape) != tuple(expected.shape):
        raise DataError(
            f"{source}: resampler kernel of shape {tuple(kernel.shape)}, expected {tuple(expected.shape)}"
        )
    error = float((kernel.double() - expected.double()).abs().max())
    if error > atol:
        raise DataError(
            f"{source}: the resampler kernel is not 48 kHz -> 16 kHz sinc resampling (max diff {error:.3g})"
        )


REFERENCE_AUDIO_KEYMAP = KeyMap(
    rules=(
        (r"audio_resampler\.kernel", r"resampler.kernel"),
        (r"audio_model\.(feature_extractor\.conv_layers\.\d+\.[02]\.(?:weight|bias))", r"\1"),
    ),
    unused=(r"audio_model\.(vector_quantizer|feature_aggregator|wav2vec_predictions)\..*",),
)
"""A released checkpoint's `audio_model.*` (the frozen vq-wav2vec) and `audio_resampler.kernel`."""


def vq_wav2vec_features_from_state(state: Mapping[str, Tensor], source: str) -> VQWav2VecFeatures:
    """`VQWav2VecFeatures` from a released face/body/guide state dict (`audio_model.*`, `audio_resampler.kernel`).

    Flags are vq-wav2vec's (`VQ_WAV2VEC`: gelu, no log compression), which no checkpoint stores.
    The stored resampler kernel is checked against torchaudio's and loaded (the reference runs
    with the stored one). Keys outside those two prefixes belong to other modules and are not
    looked at.
    """
    selected = {k: v for k, v in state.items() if k.startswith(("audio_model.", "audio_resampler."))}
    if not selected:
        raise DataError(f"{source}: holds no vq-wav2vec weights ('audio_model.*')")
    layers = stored_feature_layers(selected, "audio_model.", VQ_WAV2VEC.feature_layers, source)
    arch = replace(VQ_WAV2VEC, feature_layers=layers, aggregator_layers=())
    features = VQWav2VecFeatures(build_wav2vec1(arch).feature_extractor)
    converted = rename(selected, REFERENCE_AUDIO_KEYMAP, source)
    if "resampler.kernel" in converted:
        check_resample_kernel(converted["resampler.kernel"], f"{source} (audio_resampler.kernel)")
    load_strict(features, converted, source)
    return features


def load_vq_wav2vec_features(path: str | Path) -> VQWav2VecFeatures:
    """`VQWav2VecFeatures` from a released checkpoint (bare state dict, or `{'model_state_dict'}` of
    the guide) or from fairseq's `vq-wav2vec.pt` (flags from its args, torchaudio's kernel)."""
    path = Path(path)
    stored = load_torch_file(
        path, allow=FAIRSEQ_GLOBALS, what="an audio2photoreal checkpoint or vq-wav2vec.pt"
    )
    if "args" in stored and isinstance(stored.get("model"), Mapping):
        return VQWav2VecFeatures(
            wav2vec1_from_asset(stored, str(path), with_aggregator=False).feature_extractor
        )
    state = stored.get("model_state_dict", stored)
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: 'model_state_dict' is a {type(state).__name__}, not a state dict")
    return vq_wav2vec_features_from_state(state, str(path))
