"""CLI: `metauas train`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from metauas.training.config import TrainConfig, add_override_arguments, apply_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand (one ``--field`` option per `TrainConfig` field)."""
    parser = subparsers.add_parser(
        "train", help="meta-train MetaUAS on synthetic change pairs",
        description="Train MetaUAS. Multi-process: torchrun --nproc_per_node N -m metauas.cli train ...")
    parser.add_argument("--config", default=None, help="YAML file (configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt if present")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    add_override_arguments(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """`metauas train`: the YAML config, then the command-line overrides; prints the run summary
    as JSON and returns exit status 0.

    Raises:
        InputError: an unreadable config or invalid override (and the errors of `train`).
    """
    from metauas.training.trainer import train

    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    config = apply_overrides(config, args)
    command = "metauas " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = train(config, resume=args.resume, progress=not args.no_progress, command=command)
    print(json.dumps(summary, indent=2, default=str))
    return 0
