"""`compress` command line. Each verb lives in compress/cli/<verb>.py with two functions:
`register(subparsers)` adding its parser (which sets `func`), and the function it points at.

Every CompressError (and bad flags) ends as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shlex
import sys

from compress.core.errors import CompressError

# Order is the order shown by `compress --help`.
VERB_MODULES = (
    "methods",
    "prune",
    "finetune",
    "eval",
    "export",
    "shrink",
    "quantize",
    "bench",
    "latency_table",
    "run",
    "mask",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; keep just the line)
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="compress", description="Prune, export, shrink, quantize and benchmark transformer encoders.")
    from compress.core.version import __version__

    parser.add_argument("--version", action="version", version=f"compress {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for name in VERB_MODULES:
        importlib.import_module(f"compress.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command as the user typed it, for reports that record how they were made.
    args.command_line = "compress " + shlex.join(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _progress_bars(args):
            result = args.func(args)
    except CompressError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: no partial output was kept\n")
        return 130
    finally:
        _close_process_group()
    return int(result or 0)


@contextlib.contextmanager
def _progress_bars(args):
    """--no-progress hides the bars of `datasets` (tokenizing) and transformers (loading weights) as well as
    training's, so that an error after them is still the only line on stderr; both are restored after."""
    if getattr(args, "progress", True):
        yield
        return
    from transformers.utils import logging as hf_logging

    from compress.training.data import datasets_bars

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with datasets_bars(False):
            yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _close_process_group() -> None:
    """Under torchrun: a gloo process group left to interpreter shutdown can abort the process ("terminate
    called without an active exception", seen after a broadcast), so close it while Python still runs."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for commands that did not
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
