"""Reading `.pt` / `.pth` files made by other code (the reference's checkpoints, fairseq's assets,
`data_stats.pth`) without running arbitrary pickled code.

Every file goes through `torch.load(weights_only=True)`: tensors, containers and numbers load, and
any other class must be on the allowlist given for that kind of file (`argparse.Namespace` for
fairseq's stored args, numpy's array and scalar reconstructors for `data_stats.pth`). A file that
needs anything else is refused with the classes it asked for; nothing from it is ever imported
or called. A truncated file, a file that is not a torch file at all, or a missing one is refused
with its path and what was wrong.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from a2p.errors import DataError

FAIRSEQ_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)
"""What fairseq's old asset files (vq-wav2vec.pt, wav2vec_large.pt) pickle besides tensors: their `args`."""


def _numpy_globals() -> tuple[Any, ...]:
    """numpy's reconstructors of arrays, dtypes and scalars, under numpy 1.x and 2.x names alike."""
    multiarray = np._core.multiarray  # pickled by numpy 1.x as numpy.core.multiarray
    reconstructors = [
        (function, f"{package}.multiarray.{function.__name__}")
        for function in (multiarray._reconstruct, multiarray.scalar)
        for package in ("numpy.core", "numpy._core")
    ]
    dtypes = [
        getattr(np.dtypes, name)
        for name in dir(np.dtypes)
        if name.endswith("DType") and isinstance(getattr(np.dtypes, name), type)
    ]
    return (*reconstructors, np.ndarray, np.dtype, *dtypes)


NUMPY_GLOBALS: tuple[Any, ...] = _numpy_globals()
"""What a torch file of numpy arrays (the reference's `data_stats.pth`) pickles."""


def load_torch_file(path: str | Path, *, allow: Sequence[Any] = (), what: str = "a torch file") -> dict:
    """The object stored in the torch file at `path`, on the CPU, loaded with `weights_only=True`.

    `allow` names the few classes beyond tensors and containers this kind of file may hold.
    `what` says what the file should be ("the face checkpoint"), for the error messages.
    Every file a2p reads this way holds a dict at the top. Raises `DataError` naming the file for
    a missing, truncated, foreign or disallowed file, or one that holds anything but a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected {what})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected {what})")
    try:
        with torch.serialization.safe_globals(list(allow)):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        asks = _unsafe_globals(path)
        if asks:
            raise DataError(
                f"{path}: refused, it pickles classes outside what {what} may hold: {', '.join(asks)} "
                "(nothing was run)"
            ) from None
        raise DataError(f"{path}: not {what} that can be read ({_first_line(error)})") from None
    except (
        Exception
    ) as error:  # torch raises many kinds on foreign bytes (KeyError, RuntimeError, EOFError, ...)
        raise DataError(
            f"{path}: not {what} that can be read, truncated or not a torch file ({_first_line(error)})"
        ) from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: holds a {type(loaded).__name__}, not {what} (a torch file of a dict)")
    return loaded


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a torch zip file pickles that `weights_only` loading would refuse ([] if unknown)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy or damaged file: say only what torch said
        return []


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
