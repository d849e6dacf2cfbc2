"""The reference's state dicts onto a2p's modules: renames, the split of fused attention weights,
and a strict account of every tensor (used, or named as knowingly unused).

One module per released model (`denoiser`, `guide`, `vq`) holds its rules; this one holds the
mechanism they share. `rename` is strict: a tensor that no rule maps and no `unused` pattern names
is an error naming the file and the keys, so a wrong or newer file never half-loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import Tensor

from a2p.errors import DataError

Rule = tuple[str, str]
"""(regular expression matching a whole reference key, replacement template as in `re.Match.expand`)."""


@dataclass(frozen=True)
class KeyMap:
    """How one released model's state dict becomes an a2p state dict."""

    rules: tuple[Rule, ...]
    """Tried in order; the first pattern that matches a key renames it."""
    unused: tuple[str, ...] = ()
    """Patterns of keys knowingly left out (recomputed buffers, parts a2p loads elsewhere)."""


def split_attention(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torch `nn.MultiheadAttention` tensors as a2p's `Attention` names them.

    `P.in_proj_weight` / `P.in_proj_bias` (rows q, k, v) become `P.to_q.*` (rows [0, W)) and
    `P.to_kv.*` (rows [W, 3W): keys then values, as `to_kv(x).chunk(2)` reads them);
    `P.out_proj.*` becomes `P.to_out.*`. Every other tensor passes unchanged.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        prefix, _, name = key.rpartition(".")
        if name in ("in_proj_weight", "in_proj_bias"):
            kind = name.removeprefix("in_proj_")
            width = tensor.shape[0] // 3
            out[f"{prefix}.to_q.{kind}"] = tensor[:width]
            out[f"{prefix}.to_kv.{kind}"] = tensor[width:]
        elif ".out_proj." in f".{key}":
            out[key.replace("out_proj.", "to_out.")] = tensor
        else:
            out[key] = tensor
    return out


def rename(state: Mapping[str, Tensor], keymap: KeyMap, source: str) -> dict[str, Tensor]:
    """`state` renamed by `keymap`'s rules; raises `DataError` naming `source` for unknown keys."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if any(re.fullmatch(pattern, key) for pattern in keymap.unused):
            continue
        for pattern, template in keymap.rules:
            match = re.fullmatch(pattern, key)
            if match:
                target = match.expand(template)
                if target in out:
                    raise DataError(f"{source}: two tensors map onto {target!r} (the second is {key!r})")
                out[target] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise DataError(f"{source}: {len(unknown)} tensor(s) no rule maps: {_some(unknown)}")
    return out


def check_complete(loaded_keys: Iterable[str], expected_keys: Iterable[str], source: str) -> None:
    """Raise `DataError` naming `source` when the converted tensors miss or add keys of the a2p model."""
    loaded, expected = set(loaded_keys), set(expected_keys)
    missing, extra = sorted(expected - loaded), sorted(loaded - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_some(missing)}")
        if extra:
            parts.append(f"unexpected {len(extra)}: {_some(extra)}")
        raise DataError(f"{source}: does not hold this model's weights ({'; '.join(parts)})")


def _some(keys: list[str], shown: int = 6) -> str:
    more = f" ... (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
