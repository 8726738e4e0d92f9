"""Run a capture file through an Analysis, reading and decoding it in a second process.

Walking records and decoding them (numpy) need no connection state, so on a machine with
more than one core a helper process does that for a big file while this one runs the
connection state machine: the two halves take similar time, and the whole takes about
the longer of the two. Small files and standard input are read in this process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterator

from rsthound.analyze.session import Analysis, Selection, prepare
from rsthound.errors import BadInput, RstHoundError
from rsthound.formats.columns import DecodeStats
from rsthound.formats.records import RecordBatch
from rsthound.model import Damage
from rsthound.sources.capfile import PacketFilter, read_capture

PARALLEL_MIN_BYTES = 32 << 20
QUEUE_DEPTH = 3  # batches in flight: bounds the memory the helper can run ahead with


def analyze_file(path: str, analysis: Analysis,
                 progress: Callable[[int], None] = lambda _offset: None,
                 parallel: bool | None = None, expression: str | None = None) -> None:
    """Feed the capture at `path` into `analysis`; BadInput when it is unusable.
    `expression`: only the packets this tcpdump filter expression takes.

    `parallel` None: decide by file size and core count.
    """
    if parallel is None:
        parallel = _worth_a_helper(path)
    if parallel:
        # fork starts at once, but is unsafe once threads run (the progress bar's): spawn then
        ctx = mp.get_context("fork" if threading.active_count() == 1 else "spawn")
        try:
            q = ctx.Queue(maxsize=QUEUE_DEPTH)
            helper = ctx.Process(
                target=_helper, args=(path, analysis.selection, analysis.table.counts, q,
                                      expression, analysis.quick),
                name="rsthound-reader", daemon=True,
            )
            helper.start()
        except OSError:  # no semaphores or no processes here (some sandboxes): read inline
            parallel = False
    if not parallel:
        for batch in _read(path, analysis.summary.damages, expression):
            progress(analysis.feed(batch).end_offset)
        return
    try:
        while True:
            try:
                kind, payload = q.get(timeout=1.0)
            except queue.Empty:
                if not helper.is_alive():
                    raise RuntimeError(
                        f"the reading process died (exit code {helper.exitcode})") from None
                continue
            if kind == "batch":
                analysis.feed_prepared(payload)
                progress(payload.end_offset)
            elif kind == "end":
                damages, stats = payload
                analysis.summary.damages.extend(damages)
                analysis.stats.merge(stats)
                return
            elif kind == "bad":
                reason, where, offset = payload
                raise BadInput(reason, where, offset)
            else:
                raise RuntimeError(f"the reading process failed:\n{payload}")
    finally:
        if helper.is_alive():
            helper.terminate()
        helper.join(timeout=5)


def _worth_a_helper(path: str) -> bool:
    if path == "-" or (os.cpu_count() or 1) < 2:
        return False
    try:
        return os.path.getsize(path) >= PARALLEL_MIN_BYTES
    except OSError:
        return False  # let the reader say what is wrong


def _read(path: str, damages: list[Damage], expression: str | None) -> Iterator[RecordBatch]:
    """The file's batches, those packets only that `expression` takes."""
    batches = read_capture(path, damages)
    if expression is None:
        return batches
    keep = PacketFilter(expression)
    return (keep.batch(b) for b in batches)


def _helper(path: str, selection: Selection, counts: bool, q: mp.Queue,
            expression: str | None = None, quick: bool = False) -> None:
    damages: list[Damage] = []
    stats = DecodeStats()
    try:
        for batch in _read(path, damages, expression):
            q.put(("batch", prepare(batch, selection, stats, counts, quick)))
        q.put(("end", (damages, stats)))
    except BadInput as e:
        q.put(("bad", (e.reason, e.path, e.offset)))
    except RstHoundError as e:
        q.put(("crash", str(e)))
    except KeyboardInterrupt:
        pass
    except BaseException:
        q.put(("crash", traceback.format_exc()))
