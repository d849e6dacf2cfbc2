"""Small file helpers shared across a2p: checksums and JSON that fails with the file's name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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
