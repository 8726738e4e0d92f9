"""Run a capture file through an Analysis, reading and decoding it in another process.

Walking records and decoding them (numpy) need no connection state, so on a machine with
more than one core, a helper process does that for a big file while this one runs the
connection state machine. For a summary, a classic pcap file is cut into spans of CHUNK
bytes; the helper and this process each take the next one whenever they are free (this
one while it has nothing to track). Each span's first record is guessed by its reader,
and proved here: it must be where the span before it ended (if not, this process reads
that span again). Otherwise (a pcapng file, or connections and resets streamed out in the
order they end) the helper reads the whole file. Small files and standard input are read
here.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import itertools
import mmap
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from multiprocessing.sharedctypes import Synchronized
from typing import TypeVar

import numpy as np

from rsthound.analyze.flows import Plan
from rsthound.analyze.session import Analysis, Prepared, Selection, prepare
from rsthound.errors import BadInput, RstHoundError
from rsthound.formats.columns import DecodeStats
from rsthound.formats.pcap import is_pcap
from rsthound.formats.records import RecordBatch
from rsthound.model import Damage
from rsthound.sources.capfile import PacketFilter, read_capture, record_near

PARALLEL_MIN_BYTES = 32 << 20
QUEUE_DEPTH = 3  # batches in flight: bounds the memory the helper can run ahead with
SPAN_QUEUE_DEPTH = 16  # ... when spans are shared: about two spans, so that the helper goes
# on while this process reads one of its own
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
FEW_COLLECTIONS = (100_000, 50, 100)  # the cyclic collector's thresholds while reading
CHUNK = 256 << 20  # bytes of a pcap file a reader takes at a time
RING = 16 << 20  # bytes of memory shared with a forked helper, for its plans' arrays
AHEAD = 12  # batches this process may read ahead of their turn (about two spans)
T, U, R = TypeVar("T"), TypeVar("U"), TypeVar("R")


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
        _keep_freed_memory()
    # the cyclic collector walks every live object now and then: with a million tracked
    # connections' objects, less often (the flow table frees its own, without cycles)
    saved = gc.get_threshold()
    gc.set_threshold(*FEW_COLLECTIONS)
    try:
        _analyze_file(path, analysis, progress, parallel, expression)
    finally:
        gc.set_threshold(*saved)


def _analyze_file(path: str, analysis: Analysis, progress: Callable[[int], None],
                  parallel: bool, expression: str | None) -> None:
    # Spans: for a summary. A summary's batches also end at each CHUNK border, read in
    # spans or not, so that both ways make the same batches (a connection's end can
    # depend on where batches end). Connections and resets streamed out one by one keep
    # the batches and the order they always had.
    summary = analysis.table.on_quick is not None
    border = CHUNK if summary else None
    spans = _spans(path) if parallel and summary else None
    if spans is not None and len(spans) > 1:
        _read_spans(path, spans, analysis, progress, expression)
        return
    if parallel:
        ctx = _context()
        try:
            q = ctx.Queue(maxsize=QUEUE_DEPTH)
            helper = ctx.Process(
                target=_span_reader, args=(path, [None], None, analysis.selection,
                                           analysis.table.counts, q, expression, border),
                name="rsthound-reader", daemon=True,
            )
            helper.start()
        except OSError:  # no semaphores or no processes here (some sandboxes): read inline
            parallel = False
    if not parallel:
        for batch in _read(path, analysis.summary.damages, expression, border=border):
            progress(analysis.feed(batch).end_offset)
        return
    try:
        _take(q, helper, "start")
        _feed(_from_helper(q, helper), analysis, progress)
        _take(q, helper, "done")
    finally:
        if helper.is_alive():
            helper.terminate()
        helper.join(timeout=5)


def _spans(path: str) -> list[tuple[int, int]] | None:
    """The byte spans a classic pcap file is read in; None for any other file."""
    try:
        with open(path, "rb") as f:
            if not is_pcap(f.read(4)):
                return None
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    return [(max(24, a), min(size, a + CHUNK)) for a in range(0, size, CHUNK)]


def _context() -> mp.context.BaseContext:
    # fork starts at once, but is unsafe once threads run (the progress bar's): spawn then
    return mp.get_context("fork" if threading.active_count() == 1 else "spawn")


def _read_spans(path: str, spans: list[tuple[int, int]], analysis: Analysis,
                progress: Callable[[int], None], expression: str | None) -> None:
    """Read `spans` of a pcap file, and track their batches here in the file's order.

    A helper process and this one each take the next span nobody has taken whenever they
    are free: the helper as soon as it ends one, this process while it has none of the
    helper's batches to track (it keeps what it reads until the span's turn; AHEAD
    batches at most). So both cores work until the end, whichever half is the slower,
    and no third process shares them."""
    ctx = _context()
    try:
        taken = ctx.Value("i", 0)  # the first span nobody has taken yet
        q = ctx.Queue(maxsize=SPAN_QUEUE_DEPTH)
        ring = _Ring.make(RING, ctx)
        helper = ctx.Process(target=_span_reader,
                             args=(path, spans, taken, analysis.selection,
                                   analysis.table.counts, q, expression, CHUNK, ring),
                             name="rsthound-reader", daemon=True)
        helper.start()
    except OSError:  # no semaphores or no processes here (some sandboxes): read inline
        taken = helper = ring = None

    def read(idx: int) -> Iterator[tuple[str, object]]:
        return _span_messages(path, idx, spans[idx], analysis.selection,
                              analysis.table.counts, expression, CHUNK)

    ahead = _Ahead(read, taken, len(spans))
    try:
        expected = 24  # the first record of the next span, proved by reading up to it
        last_sec = None  # the time of the record before it (for a resync after damage)
        for idx, (_a, stop) in enumerate(spans):
            messages = ahead.take(idx)
            mine = messages is not None
            if not mine and helper is not None and _claim(taken, len(spans), only=idx) is None:
                messages = _from_helper(q, helper, idle=ahead.step, ring=ring)
            # (else nobody had taken it: it is read now, below)
            if messages is not None:
                _, (started, first) = next(messages)
                assert started == idx
                if expected < stop and first == expected:
                    ended = _feed(messages, analysis, progress)
                    assert ended is not None  # (a classic pcap's reader says where it stopped)
                    expected, span_last = ended
                    last_sec = span_last if span_last is not None else last_sec
                elif not mine:  # the guess was wrong, or the span holds no record
                    for _ in messages:
                        pass
            # what was not read yet (from a wrong guess, or from damage, which a span's
            # reader leaves to this point: a resync judges times by the record before)
            if expected < stop:
                expected, last_sec = _read_inline(path, (expected, stop), analysis,
                                                  progress, expression, last_sec)
        if helper is not None:
            _take(q, helper, "done")
    finally:
        if helper is not None:
            if helper.is_alive():
                helper.terminate()
            helper.join(timeout=5)


class _Ahead:
    """The spans this process reads while it waits for the helper, each as the messages
    the helper would have sent, kept until the span's turn."""

    def __init__(self, read: Callable[[int], Iterator[tuple[str, object]]],
                 taken: Synchronized | None, spans: int) -> None:
        self.read, self.taken, self.spans = read, taken, spans
        self.kept: dict[int, list[tuple[str, object]]] = {}
        self.open: tuple[int, Iterator[tuple[str, object]]] | None = None  # being read
        self.batches = 0  # kept

    def step(self) -> bool:
        """Read one more message ahead; False when there is nothing to do for now."""
        if self.taken is None or self.batches >= AHEAD:
            return False
        if self.open is None:
            idx = _claim(self.taken, self.spans)
            if idx is None:
                return False
            self.open = (idx, self.read(idx))
            self.kept[idx] = []
        idx, messages = self.open
        message = next(messages, None)
        if message is None:
            self.open = None
        else:
            self.kept[idx].append(message)
            self.batches += message[0] == "batch"
        return True

    def take(self, idx: int) -> Iterator[tuple[str, object]] | None:
        """Span `idx`'s messages if it was read here: those kept, then the rest (read as
        they are asked for); None if it was not."""
        kept = self.kept.pop(idx, None)
        if kept is None:
            return None
        self.batches -= sum(kind == "batch" for kind, _ in kept)
        rest: Iterator[tuple[str, object]] = iter(())
        if self.open is not None and self.open[0] == idx:
            rest, self.open = self.open[1], None
        return itertools.chain(kept, rest)


class _Ring:
    """Memory shared with a forked helper, through which its plans' arrays come: it
    copies them in, this process copies them out, and only a small description goes
    through the queue (pickled arrays through its pipe cost both processes more: a tenth
    of a second each on a 6 GB capture). Plans are stored one after the other, wrapping
    around; the helper waits for room, which this process gives back in order."""

    ALIGN = 64

    def __init__(self, size: int, ctx: mp.context.BaseContext) -> None:
        self.size = size
        self.buf = np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)  # shared on fork
        self.freed = ctx.RawValue("q", 0)  # bytes given back, ever (set here only)
        self.head = 0  # bytes handed out, ever (in the helper only)
        self.owner = os.getpid()  # this process

    @classmethod
    def make(cls, size: int, ctx: mp.context.BaseContext) -> _Ring | None:
        """A ring shared with a helper forked by `ctx`; None for a spawned one (it could
        not map this memory) or where no memory can be shared (then plans are pickled)."""
        if ctx.get_start_method() != "fork":
            return None
        try:
            return cls(size, ctx)
        except OSError:
            return None

    def put(self, prepared: Prepared) -> Prepared:
        """In the helper: `prepared` with its plan's arrays stored (or as it is, if they
        do not fit at all)."""
        plan = prepared.plan
        arrays = [(("rows", k), v) for k, v in plan.rows.items()]
        arrays += [(("bulk", k), v) for k, v in (plan.bulk or {}).items()]
        arrays.append((("packed", ""), np.frombuffer(plan.packed, dtype=np.uint8)))
        room = [-(-v.nbytes // self.ALIGN) * self.ALIGN for _, v in arrays]  # each, aligned
        need = sum(room)
        if need > self.size or any(v.dtype.hasobject for _, v in arrays):
            return prepared
        at = self.head
        if at % self.size + need > self.size:  # not across the end: from the start
            at += self.size - at % self.size
        # until this process has taken out enough (an empty ring has room anywhere)
        while at + need - self.freed.value > self.size and self.freed.value != self.head:
            if os.getppid() != self.owner:  # it is gone (killed): nobody will give room
                os._exit(1)
            time.sleep(0.001)
        off = at % self.size
        layout = []
        for (name, v), size in zip(arrays, room, strict=True):
            self.buf[off:off + v.nbytes] = v.reshape(-1).view(np.uint8)
            layout.append((name, v.dtype.str, v.shape, off))
            off += size
        self.head = at + need
        return dataclasses.replace(prepared,
                                   plan=_Stored(layout, plan.bulk is not None, at + need))

    def take(self, prepared: Prepared) -> Prepared:
        """Here: `prepared` with its plan's arrays copied out, and their room given back."""
        stored = prepared.plan
        if not isinstance(stored, _Stored):
            return prepared
        parts: dict[str, dict[str, np.ndarray]] = {"rows": {}, "bulk": {}, "packed": {}}
        for (part, k), dtype, shape, off in stored.layout:
            dt = np.dtype(dtype)
            n = dt.itemsize * int(np.prod(shape))
            parts[part][k] = self.buf[off:off + n].view(dt).reshape(shape).copy()
        self.freed.value = stored.end
        prepared.plan = Plan(parts["rows"], parts["packed"][""].tobytes(),
                             parts["bulk"] if stored.bulk else None)
        return prepared


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    """Where a plan's arrays are in a `_Ring`: ((part, name), dtype, shape, offset) each."""

    layout: list[tuple[tuple[str, str], str, tuple[int, ...], int]]
    bulk: bool  # (the plan had bulk columns)
    end: int  # the ring's bytes handed out, up to and with this plan's


def _claim(taken: Synchronized, spans: int, only: int | None = None) -> int | None:
    """Take the next span nobody has taken (only if it is `only`); None if there is none."""
    with taken.get_lock():
        idx = taken.value
        if idx >= spans or (only is not None and idx != only):
            return None
        taken.value = idx + 1
    return idx


def _from_helper(q: mp.Queue, helper: mp.Process, idle: Callable[[], bool] | None = None,
                 ring: _Ring | None = None) -> Iterator[tuple[str, object]]:
    """A helper's messages about one span, up to its end (each batch's arrays taken out of
    `ring` as it comes)."""
    while True:
        kind, payload = _take(q, helper, idle=idle)
        if ring is not None and kind == "batch":
            payload = ring.take(payload)
        yield kind, payload
        if kind == "end":
            return


def _feed(messages: Iterator[tuple[str, object]], analysis: Analysis,
          progress: Callable[[int], None]) -> tuple[int, int | None] | None:
    """A span's batches into `analysis`, up to its end: then where its reading stopped and
    the time of its last record (None for a pcapng file). Its damage and decode counts
    come with the end (so that a span read again here counts once)."""
    for kind, payload in messages:
        if kind == "batch":
            analysis.feed_prepared(payload)
            progress(payload.end_offset)
            continue
        ended, damages, stats = payload  # "end"
        analysis.summary.damages.extend(damages)
        analysis.stats.merge(stats)
        return ended
    raise RuntimeError("a span's messages ended without its end")


def _take(q: mp.Queue, helper: mp.Process, want: str | None = None,
          idle: Callable[[], bool] | None = None) -> tuple[str, object]:
    """The next message of a helper; its errors raised here. While there is none, `idle()`
    is called for as long as it finds something to do."""
    while True:
        if idle is not None and q.empty() and idle():
            continue
        try:
            kind, payload = q.get(timeout=1.0)
        except queue.Empty:
            if not helper.is_alive():
                raise RuntimeError(
                    f"the reading process died (exit code {helper.exitcode})") from None
            continue
        if kind == "bad":
            reason, where, offset = payload
            raise BadInput(reason, where, offset)
        if kind == "crash":
            raise RuntimeError(f"the reading process failed:\n{payload}")
        if want is not None and kind != want:
            raise RuntimeError(f"the reading process said {kind!r} where {want!r} was due")
        return kind, payload


def _read_inline(path: str, span: tuple[int, int], analysis: Analysis,
                 progress: Callable[[int], None], expression: str | None,
                 last_sec: int | None) -> tuple[int, int | None]:
    """Read one span here: where the next record starts, and the last record's time."""
    got = _each(_read(path, analysis.summary.damages, expression, span, last_sec=last_sec,
                      border=CHUNK),
                lambda batch: progress(analysis.feed(batch).end_offset))
    assert got is not None  # (a classic pcap's reader returns where it stopped)
    return got


def _each(batches: Generator[RecordBatch, None, tuple[int, int | None] | None],
          use: Callable[[RecordBatch], object]) -> tuple[int, int | None] | None:
    """Each batch to `use`; then where the next record starts (what `batches` returns)."""
    while True:
        try:
            batch = next(batches)
        except StopIteration as end:
            return end.value
        use(batch)


def _span_reader(path: str, spans: list[tuple[int, int] | None], taken: Synchronized | None,
                 selection: Selection, counts: bool, q: mp.Queue, expression: str | None,
                 border: int | None, ring: _Ring | None = None) -> None:
    """A helper: the messages of each span it takes (`taken` None: every one of `spans`;
    a span None: the whole file), as `_span_messages` makes them, the batches' arrays
    through `ring`; then ("done", None)."""
    _as_a_reader()
    with _reported(q):
        for idx in range(len(spans)) if taken is None else iter(
                lambda: _claim(taken, len(spans)), None):
            for kind, payload in _span_messages(path, idx, spans[idx], selection, counts,
                                                expression, border):
                if ring is not None and kind == "batch":
                    payload = ring.put(payload)
                q.put((kind, payload))
        q.put(("done", None))


def _span_messages(path: str, idx: int, span: tuple[int, int] | None, selection: Selection,
                   counts: bool, expression: str | None,
                   border: int | None) -> Iterator[tuple[str, object]]:
    """Span `idx` read and made ready for tracking (None: the whole file), as messages:
    ("start", (idx, its first record or None)), ("batch", Prepared) ..., ("end", ((where
    it stopped, its last record's time), damages, DecodeStats)). In a span, damage is left
    to the main process (a resync judges times by the record before, which only it
    knows)."""
    if span is None:
        first, stop = 24, None
    else:
        a, stop = span
        first = 24 if a <= 24 else record_near(path, a)
    yield "start", (idx, first)
    damages: list[Damage] = []
    stats = DecodeStats()
    ended = (first, None)
    if stop is None or (first is not None and first < stop):
        batches = _read(path, damages, expression, None if stop is None else (first, stop),
                        check=False, border=border, until_damage=stop is not None)
        ended = yield from _mapped(batches, lambda batch: (
            "batch", prepare(batch, selection, stats, counts)))
    yield "end", (ended, damages, stats)


def _as_a_reader() -> None:
    """A helper's memory and collector settings, as this process has them (a helper that
    was spawned, not forked, because a progress bar's thread runs, starts without them)."""
    _keep_freed_memory()
    gc.set_threshold(*FEW_COLLECTIONS)


@contextlib.contextmanager
def _reported(q: mp.Queue) -> Iterator[None]:
    """In a helper: what goes wrong goes to this process through `q` (see `_take`)."""
    try:
        yield
    except BadInput as e:
        q.put(("bad", (e.reason, e.path, e.offset)))
    except RstHoundError as e:
        q.put(("crash", str(e)))
    except KeyboardInterrupt:
        pass
    except BaseException:
        q.put(("crash", traceback.format_exc()))


def _keep_freed_memory() -> None:
    """Freed arrays go back to the C heap, not to the kernel. By default glibc maps every
    array of more than some hundreds of kilobytes afresh, and the kernel zeroes its pages,
    batch after batch: about a twentieth of the CPU time on a big file. The heap keeps at
    most 256 MB it does not use (where the C library has mallopt; elsewhere, nothing)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):
        pass


def _worth_a_helper(path: str) -> bool:
    if path == "-" or (os.cpu_count() or 1) < 2:
        return False
    try:
        return os.path.getsize(path) >= PARALLEL_MIN_BYTES
    except OSError:
        return False  # let the reader say what is wrong


def _read(path: str, damages: list[Damage], expression: str | None,
          span: tuple[int, int] | None = None, check: bool = True,
          last_sec: int | None = None, border: int | None = None, until_damage: bool = False,
          ) -> Generator[RecordBatch, None, tuple[int, int | None] | None]:
    """The file's batches (of `span`), those packets only that `expression` takes; returns
    where reading stopped and the last record's time (a classic pcap)."""
    batches = read_capture(path, damages, span, last_sec, border, until_damage)
    if expression is None:
        return (yield from batches)
    return (yield from _mapped(batches, PacketFilter(expression, check=check).batch))


def _mapped(items: Generator[T, None, R], f: Callable[[T], U]) -> Generator[U, None, R]:
    """`f` of each item of `items`; returns what `items` returns."""
    while True:
        try:
            item = next(items)
        except StopIteration as end:
            return end.value
        yield f(item)
