"""Command line: ``precedents demo``, ``explain``, ``evaluate``, ``debug`` and ``serve``.

One module per command (:mod:`.explain`, :mod:`.evaluate`, :mod:`.debug`, :mod:`.demo`, each with ``run(args)``),
the arguments in :mod:`.parser`, reading the user's files and the output-folder rule in :mod:`.files`.

Errors: a bad input (a missing or malformed file, a wrong option value, data the model or method refuses)
ends in one line on stderr, ``precedents <command>: error: <message>``, and exit status 2; anything else
(a bug) in one line naming the exception, exit status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import csv
import importlib
import pickle
import sys
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

from .._validation import PrecedentsError
from .files import last_line
from .parser import build_parser

__all__ = ["main", "build_parser"]

#: what a user's input can raise: our own errors, the ValueErrors estimators raise on purpose, the file system,
#: and parsers of files (a missing optional package is an ImportError with the install command)
USER_ERRORS: tuple[type[BaseException], ...] = (PrecedentsError, ValueError, OSError, ImportError, EOFError,
                                                zipfile.BadZipFile, pickle.UnpicklingError, csv.Error)


def _error(command: str, message: str) -> None:
    prefix = f"precedents {command}" if command else "precedents"
    print(f"{prefix}: error: {' '.join(str(message).split())}", file=sys.stderr)


def _show_warning(command: str) -> Any:
    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        print(f"precedents {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 bad input, 1 internal error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:                  # --help, or an argument error already printed in one line
        return int(stop.code or 0)
    command = args.command
    module = importlib.import_module(f".{command}", __name__)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(command)
            return module.run(args)
    except KeyboardInterrupt:
        _error(command, "interrupted")
        return 130
    except USER_ERRORS as err:
        if args.debug:
            raise
        _error(command, str(err) or type(err).__name__)
        return 2
    except Exception as err:  # a bug: one line, the traceback with --debug
        if args.debug:
            raise
        _error(command, f"{type(err).__name__}: {last_line(err)} (this may be a bug in precedents; rerun with "
                        "--debug for the traceback)")
        return 1
