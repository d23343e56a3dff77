"""`metauas` command line. Each area registers its own sub-commands (see COMMAND_MODULES).

A module in COMMAND_MODULES exposes `register(subparsers) -> None`; each sub-parser sets
`func=callable(args) -> int`. When the first argument names a command (`COMMANDS`), only that
command's module is imported: `metauas segment` does not import evaluation (scipy), synthesis
or training code (start-up time, issue 13). Errors derived from MetaUASError (and common OS errors) are
printed as one line with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import typing
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
COMMANDS = {"segment": 0, "calibrate": 0, "export": 0, "info": 0, "synth": 1, "eval": 2, "make-dataset": 2,
            "train": 3, "serve": 4}  # command -> index into COMMAND_MODULES


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, ``<prog>: error: <message>``, exit 2
    (sub-command parsers are of the same class); ``--help`` still prints the full usage."""

    def error(self, message: str) -> "typing.NoReturn":  # type: ignore[override]
        """Print ``message`` as one line on stderr and exit with status 2.

        Raises:
            SystemExit: always, with code 2.
        """
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `metauas` argument parser: one subcommand per module of COMMAND_MODULES, or only
    ``command``'s module when it is known (keeps start-up small); modules of areas that are not
    installed are left out.

    Raises:
        ModuleNotFoundError: a command module fails to import because of another missing module.
    """
    modules = [COMMAND_MODULES[COMMANDS[command]]] if command in COMMANDS else COMMAND_MODULES
    parser = OneLineParser(
        prog="metauas",
        description="Universal anomaly segmentation from one normal image (MetaUAS).",
    )
    parser.add_argument("--version", action="version", version=f"metauas {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in modules:
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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
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
