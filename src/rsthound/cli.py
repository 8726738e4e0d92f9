"""Command line: the parser (built from each command's module), the dispatch, and the exit
code of an error. This is the only module that prints errors. `main()` takes its streams
as arguments so that tests run the whole CLI in-process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import TextIO

# rsthound does no linear algebra: numpy's BLAS needs no thread of its own (one that waits
# on a core for work, on two-core machines too). Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from rsthound import __version__
from rsthound.commands import NAMES, Exit
from rsthound.errors import RstHoundError

__all__ = ["Exit", "build_parser", "main", "run"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"rsthound.commands.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, the same with that command alone (so that running
    one command imports only what it needs)."""
    p = _Parser(
        prog="rsthound",
        description="Track down failed TCP connections and RST packets, and explain them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'rsthound COMMAND --help' for a command's options and examples.",
    )
    p.add_argument("--version", action="version", version=f"rsthound {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    if only is None:
        import shtab  # (a tenth of a second to import: only for the whole parser)

        # completion scripts made from this parser (shtab), e.g. --print-completion bash
        shtab.add_argument_to(p, ["--print-completion"], help="print a completion script "
                              "for this shell (bash, zsh, tcsh) and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in NAMES if only is None else [only]:
        _command(name).add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    words = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(words[0] if words and words[0] in NAMES else None)
    try:
        args = parser.parse_args(words)
    except _UsageError as e:
        err.write(f"{e}\n")
        return Exit.ERROR
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(out)
        return Exit.ERROR
    try:
        return _command(args.command).run(args, out, err)
    except RstHoundError as e:
        if args.debug:
            traceback.print_exc(file=err)
        err.write(f"rsthound: {e}\n")
        return Exit.ERROR
    except KeyboardInterrupt:
        err.write("rsthound: interrupted\n")
        return 130
    except BrokenPipeError:
        # the reader went away (| head): say nothing, as other Unix tools do
        _silence_stdout()
        return Exit.OK


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
