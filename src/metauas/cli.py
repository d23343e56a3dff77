"""`metauas` command line. Each area registers its own sub-commands (see COMMAND_MODULES).

A module in COMMAND_MODULES exposes `register(subparsers) -> None`; each sub-parser sets
`func=callable(args) -> int`. Errors derived from MetaUASError (and common OS errors) are
printed as one line with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from metauas import __version__
from metauas.errors import MetaUASError
from metauas.threads import set_default_wait_policy

# Before a sub-command module imports torch (importing metauas did this already; kept explicit
# so the CLI stays right if the package import ever changes).
set_default_wait_policy()

COMMAND_MODULES = (
    "metauas.inference.commands",  # segment, info, export
    "metauas.synthesis.commands",  # synth
    "metauas.evaluation.commands",  # eval, make-dataset
    "metauas.training.commands",  # train
    "metauas.web.commands",  # serve
)


def build_parser() -> argparse.ArgumentParser:
    """The `metauas` argument parser with one subcommand per module of COMMAND_MODULES (modules of
    areas that are not installed are left out).

    Raises:
        ModuleNotFoundError: a command module fails to import because of another missing module.
    """
    parser = argparse.ArgumentParser(
        prog="metauas",
        description="Universal anomaly segmentation from one normal image (MetaUAS).",
    )
    parser.add_argument("--version", action="version", version=f"metauas {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # area not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `metauas` command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    Returns:
        the exit status: the command's (0 success, 1 partial, e.g. skipped queries), 2 for a
        usage or input error (message on stderr), 130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MetaUASError as exc:
        print(f"metauas: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"metauas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metauas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
