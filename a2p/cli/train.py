"""`a2p train TASK`: train one task of the registry; the same command on one process or many.

    a2p train TASK --data SHARDS/PERSON --run-dir DIR [--preset paper|a2p|debug] [--config FILE.json]
        [--max-steps N] [--resume latest|PATH] [--deepspeed ds_configs/FILE.json]
        [--audio-weights FILE [--lip-weights FILE]] [--vq RUN_OR_EXPORT]
        [--set section.key=value ...] [--dry-run]

The `paper` presets (the default) train the released architectures on the reference's frozen
front end: vq-wav2vec (`--audio-weights`: fairseq's vq-wav2vec.pt or a released checkpoint)
and, for the face, the lip regressor (`--lip-weights`, default the same file: the released face
file holds both), on shards built from a folder with the person's data_stats.pth.

Config load order: the task's preset <- `--config` file <- `--data/--max-steps/--deepspeed` <-
`--set`. Several processes: `torchrun --nproc_per_node N -m a2p.cli.train ...` (on CPU too;
`accelerate launch --cpu --num_processes N` starts only one), `accelerate launch -m a2p.cli.train`,
the `deepspeed` launcher or `srun` (one task per device). Exit codes: 0 finished, 75 stopped by
SIGUSR1/SIGTERM after saving a checkpoint (requeue and `--resume latest`), 2 a user error.
"""

from __future__ import annotations

import argparse
import json
import sys

from a2p.cli.common import reports_errors, setup_logging


def build_parser() -> argparse.ArgumentParser:
    """The command line of `a2p train`."""
    from a2p.training.tasks import available_tasks

    parser = argparse.ArgumentParser(prog="a2p train", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=available_tasks(), help="what to train")
    parser.add_argument("--data", default=None, help="shard folder of one person (train.data)")
    parser.add_argument("--run-dir", required=True, help="run directory: config, checkpoints, TensorBoard")
    parser.add_argument(
        "--preset", default=None, help="named preset of the task: paper (the reference's recipe), a2p, debug"
    )
    parser.add_argument("--config", default=None, help="JSON preset file applied over the preset")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="optimizer steps of the run (train.max_steps)"
    )
    parser.add_argument(
        "--vq", default=None, help="guide only: the trained VQ, a run directory or export (task.vq)"
    )
    parser.add_argument(
        "--audio-weights",
        default=None,
        help="the frozen audio front end's weights (task.featurizer_weights): for the paper presets "
        "fairseq's vq-wav2vec.pt or a released audio2photoreal checkpoint",
    )
    parser.add_argument(
        "--lip-weights",
        default=None,
        help="face, paper preset: the lip regressor (iter-0200000.pt or the released face file; "
        "default: --audio-weights) (task.lip_weights)",
    )
    parser.add_argument("--resume", default=None, help="`latest` or a checkpoint directory")
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed JSON; selects train.backend=deepspeed")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    """Entry point of `a2p train`; returns the exit code."""
    from a2p import distributed
    from a2p.config.core import to_dict
    from a2p.training import load_run_config, train

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, rank=distributed.rank_info().rank)
    flags = []
    if args.data is not None:
        flags.append(f"train.data={json.dumps(args.data)}")
    if args.max_steps is not None:
        flags.append(f"train.max_steps={args.max_steps}")
    if args.vq is not None:
        flags.append(f"task.vq={json.dumps(args.vq)}")
    if args.audio_weights is not None:
        flags.append(f"task.featurizer_weights={json.dumps(args.audio_weights)}")
    if args.lip_weights is not None:
        flags.append(f"task.lip_weights={json.dumps(args.lip_weights)}")
    if args.deepspeed is not None:
        flags += ["train.backend=deepspeed", f"train.deepspeed_config={json.dumps(args.deepspeed)}"]
    config = load_run_config(args.task, args.preset, args.config, [*flags, *args.overrides])
    if args.dry_run:
        print(json.dumps(to_dict(config), indent=2))
        return 0
    return train(args.task, config, args.run_dir, resume=args.resume).exit_code


if __name__ == "__main__":
    sys.exit(main())
