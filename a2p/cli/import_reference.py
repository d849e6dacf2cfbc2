"""`a2p import-reference`: the released Audio2Photoreal checkpoints as a2p exports.

    a2p import-reference --face FACE.pt --body BODY.pt --guide GUIDE.pt --vq VQ.pth \\
                         --stats data_stats.pth --out DIR

Reads the released containers (bare state dicts for the diffusion models, `{iteration,
model_state_dict, ...}` for the guide, `{net, ...}` for the VQ) without running pickled code,
converts them strictly (every tensor used or knowingly unused), and writes
`DIR/{face,body,guide,vq}.safetensors` with the person's `data_stats.pth` as their units. A wrong
file (a body file as --face, a VQ file as --guide, a truncated or non-torch file) is refused,
naming the file and what it holds, and then nothing is written. The frozen audio front end
(vq-wav2vec, and the face's lip regressor) travels in the face, body and guide exports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from a2p.cli.common import reports_errors, setup_logging
from a2p.config.audio import REFERENCE_FEATURIZERS
from a2p.config.core import to_dict
from a2p.config.vq import vq_preset
from a2p.data.person_stats import load_person_stats
from a2p.models.export import FRONTEND_PREFIX, write_export
from a2p.models.frontend import check_reference_front_end
from a2p.models.keymap.release import DESCRIPTIONS, convert_release
from a2p.models.keymap.vq import read_vq_checkpoint
from a2p.models.torch_files import load_torch_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a2p import-reference", description=__doc__.splitlines()[0])
    for name in ("face", "body", "guide"):
        parser.add_argument(f"--{name}", required=True, type=Path, help=f"the released {DESCRIPTIONS[name]}")
    parser.add_argument(
        "--vq", required=True, type=Path, help="the released VQ checkpoint (net_iter300000.pth)"
    )
    parser.add_argument("--stats", required=True, type=Path, help="the person's data_stats.pth")
    parser.add_argument("--out", required=True, type=Path, help="folder for {face,body,guide,vq}.safetensors")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    stats = load_person_stats(args.stats)
    units = stats.to_lists()
    exports = {}  # everything converted before anything is written
    for name in ("face", "body", "guide"):
        path = getattr(args, name)
        container = load_torch_file(path, what=DESCRIPTIONS[name])
        converted = convert_release(container, name, str(path))
        check_reference_front_end(converted.audio, REFERENCE_FEATURIZERS[name], str(path))
        tensors = converted.tensors | {FRONTEND_PREFIX + k: v for k, v in converted.audio.items()}
        config = {"model": to_dict(converted.config), "featurizer": REFERENCE_FEATURIZERS[name]}
        exports[name] = (tensors, config)
    exports["vq"] = (read_vq_checkpoint(args.vq), {"model": to_dict(vq_preset("paper"))})
    for name, (tensors, config) in exports.items():
        out = write_export(
            args.out / f"{name}.safetensors", tensors, task=name, config=config, step=0,
            weights="reference", stats=units,
        )  # fmt: skip
        print(
            f"{out}: {name}, {sum(t.numel() for t in tensors.values()):,} values from {getattr(args, name)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
