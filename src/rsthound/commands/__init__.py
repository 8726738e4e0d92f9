"""One module per command. Each has `HELP` (its line in `rsthound --help`), `add_arguments`
(its options, description and examples) and `run(args, out, err) -> int`; `cli.py` builds
the parser from them and dispatches.

What may live here: what a command does with its arguments, its streams and the other
layers. Decisions belong in analyze/, rendering in report/, watching live in observe/.
"""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0
    FOUND = 1  # diagnose: something abnormal was found (grep-like)
    ERROR = 2  # bad usage, or an input that could not be used at all
    DAMAGED = 3  # results were reported, but part of the input was damaged and skipped


NAMES = ("analyze", "counters", "watch", "capture", "diagnose", "demo", "listeners", "history")
