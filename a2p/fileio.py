"""Small file helpers shared across a2p: checksums, JSON that fails with the file's name, atomic writes,
and the guard that keeps a name from outside (a shard's sample key, a manifest's entry) inside its folder."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from a2p.errors import A2PError

CHUNK_BYTES = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path, what: str, error: type[A2PError] = A2PError) -> Any:
    """Parse a JSON file; a missing or malformed file raises `error` naming the file and `what` it is."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise error(f"{path}: {what} not found") from err
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from err


def fsync_dir(path: str | Path) -> None:
    """Make a rename in directory `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through `write(f)` under a temporary name, fsync it, then rename it into place.

    A reader sees the old file or the whole new one, never a part; a failed write leaves no
    temporary file behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


NAME_HAZARDS = (
    ("\0", "it holds a NUL character"),
    ("/", "it holds the path separator '/'"),
    ("\\", "it holds the path separator '\\' (Windows)"),
    (":", "it holds ':', a drive or stream separator on Windows"),
)
"""Characters a plain file name never holds, and why: together they are every way a name can reach
past the last component of a POSIX or Windows path."""


def not_plain(name: object) -> str:
    """Why `name` is not a plain file name (see `plain_name`), or "" when it is one."""
    if not isinstance(name, str):
        return f"it is not a string ({type(name).__name__})"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it names a folder ('.' or '..'), not a file in it"
    if name[0] in "/\\":
        return "it is an absolute path"
    for char, why in NAME_HAZARDS:
        if char in name:
            return why
    return ""


def plain_name(name: str, what: str, error: type[A2PError] = A2PError, advice: str = "") -> str:
    """`name` itself when it is a plain file name; otherwise raise `error` naming `what`, the name and why.

    A plain name is not empty, not `.` or `..`, and holds none of `NAME_HAZARDS`. Such a name is a
    single path component with no root or drive on POSIX and on Windows, so `folder / name` (and
    `folder / f"{name}.npz"`) names an entry directly inside `folder` whatever the folder is. Names
    are refused rather than rewritten: a rewritten name could collide with another clip's.
    """
    reason = not_plain(name)
    if reason:
        raise error(
            f"{what} {name!r} is not a plain file name ({reason})" + (f"; {advice}" if advice else "")
        )
    return name
