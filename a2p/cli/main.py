"""The `a2p` command: dispatches `a2p SUBCOMMAND ...` to `a2p.cli.SUBCOMMAND.main`."""

from __future__ import annotations

import importlib
import importlib.util
import sys

from a2p.version import __version__

SUBCOMMANDS = {
    "data": ("a2p.cli.data", "build, verify and synthesize WebDataset shards"),
    "train": ("a2p.cli.train", "train a face, body, vq or guide model"),
    "export": ("a2p.cli.export", "write an inference export of a training run"),
    "sample": ("a2p.cli.sample", "turn audio into face and body motion"),
    "eval": ("a2p.cli.eval", "the paper's metrics over sampled results"),
    "import-reference": ("a2p.cli.import_reference", "the released Audio2Photoreal checkpoints as exports"),
    "demo": ("a2p.cli.demo", "run the whole pipeline on a small synthesized dataset"),
    "bench": ("a2p.cli.bench", "benchmarks: data, models, train, sample"),
}


def usage() -> str:
    lines = [f"usage: a2p SUBCOMMAND [ARGS...]   (a2p {__version__})", "", "subcommands:"]
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            lines.append(f"  {name:<8} {help_text}")
    lines.append("")
    lines.append("`a2p SUBCOMMAND --help` describes each one.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    entry = SUBCOMMANDS.get(name)
    if entry is None or importlib.util.find_spec(entry[0]) is None:
        print(f"error: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
