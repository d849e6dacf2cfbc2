"""Shards beyond the local disk: a shard folder named by an `http(s)://` URL or a `pipe:` command.

`--data https://host/shards/PXB184` reads `.../PXB184/manifest.json` and the shards it lists
from there; `--data "pipe:aws s3 cp s3://bucket/PXB184/{} -"` runs the command with `{}`
replaced by a file name and reads the file from its standard output (how users reach object
storage, as webdataset's `pipe:` URLs do). Shards are copied into a local cache directory
(`ShardCache`: written under a temporary name, then renamed, so a reader never sees half a shard)
and read from there; the cache is bounded in bytes, the least recently used shards leaving first.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import urllib.request
from pathlib import Path

from a2p.errors import DataError

REMOTE_PREFIXES = ("http://", "https://", "pipe:")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "a2p" / "shards"
DEFAULT_CACHE_GB = 50.0
TIMEOUT_S = 120


def is_remote(location: str | Path) -> bool:
    """Whether a shard folder is named by a URL or a pipe command rather than a local path."""
    return str(location).startswith(REMOTE_PREFIXES)


def member_url(location: str, name: str) -> str:
    """The URL (or command) of file `name` of the remote shard folder `location`."""
    if location.startswith("pipe:"):
        if "{}" not in location:
            raise DataError(f"{location}: a pipe: shard folder needs {{}} where the file name goes")
        return location.replace("{}", shlex.quote(name))
    return f"{location.rstrip('/')}/{name}"


def fetch(url: str, out: Path | None = None) -> bytes | None:
    """The bytes of `url` (or written to `out`), naming the URL and the problem on failure."""
    try:
        if url.startswith("pipe:"):
            done = subprocess.run(url[len("pipe:") :], shell=True, capture_output=True, timeout=TIMEOUT_S)
            if done.returncode != 0:
                tail = done.stderr.decode(errors="replace").strip()[-300:]
                raise DataError(f"{url}: the command exited with {done.returncode} ({tail})")
            data = done.stdout
        else:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                data = response.read()
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"{url}: cannot be read ({err})") from err
    if out is None:
        return data
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return None


class ShardCache:
    """A local copy of each remote shard, in `directory`, at most `max_bytes` in all (least recently used out).

    Called with a shard's URL, it returns the local file (fetched if absent). Picklable, so every
    DataLoader worker uses the same directory; a shard another worker still reads stays readable
    after it leaves the cache (its open file keeps it).
    """

    def __init__(
        self, directory: str | Path = DEFAULT_CACHE_DIR, max_bytes: float = DEFAULT_CACHE_GB * 1e9
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = float(max_bytes)
        if self.max_bytes <= 0:
            raise DataError(f"the shard cache bound must be positive, got {max_bytes} bytes")

    def __call__(self, url: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        local = self.directory / f"{digest}_{Path(url.split('?')[0]).name[-80:]}"
        if local.is_file():
            os.utime(local)  # recently used
        else:
            fetch(url, local)
            self.evict(keep=local)
        return str(local)

    def evict(self, keep: Path) -> None:
        """Remove the least recently used shards until the cache fits its bound (`keep` stays)."""
        files = [p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")]
        files.sort(key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.max_bytes:
                break
            if path != keep:
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
