"""`a2p bench NAME ...`: benchmark scripts that print figures and ratios (`a2p.bench.NAME`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

BENCHES = {
    "data": "loader throughput per worker and resident memory",
    "models": "parameters, FLOPs and ms per denoising step of the paper models",
    "train": "training samples/s per device against a reference-style loop",
    "sample": "seconds per clip against a reference-style sampler",
    "quality": "the paper's metrics for each fast sampling setting",
    "parallel": "parallel-in-time DDIM: sequential model calls saved, compute spent",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = {k: v for k, v in BENCHES.items() if importlib.util.find_spec(f"a2p.bench.{k}") is not None}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: a2p bench NAME [ARGS...]\n\nbenchmarks:")
        for name, text in available.items():
            print(f"  {name:<8} {text}")
        return 0
    if argv[0] not in available:
        print(f"error: unknown benchmark {argv[0]!r}; choose from {', '.join(available)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"a2p.bench.{argv[0]}").main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
