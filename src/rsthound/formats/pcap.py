"""Classic libpcap files: a 24-byte header, then 16-byte record headers each before a packet.

    >>> parse_pcap_header(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    PcapHeader(little=True, nanos=False, snaplen=65535, linktype=1, version=(2, 4))

Records are walked into column batches (`RecordBatch`). A record whose header cannot be
right (length beyond the file or beyond any snaplen) is damage: it is reported with its byte
offset, and reading resumes at the next place where two records in a row look sound.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from rsthound.errors import BadInput
from rsthound.formats.linktypes import SUPPORTED, link_name, supported_names
from rsthound.formats.records import (
    BATCH,
    HEADROOM,
    Interface,
    RecordBatch,
    rows_at,
    u32_at,
    unaligned,
)
from rsthound.model import Damage

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
MAX_SNAPLEN = 262144  # libpcap's largest; a bigger header snaplen is clamped to it
ABSURD_SNAPLEN = 1 << 26  # beyond this the header itself is not believable
RESYNC_WINDOW = 1 << 20
RESYNC_LIMIT = 64 << 20  # give up looking for the next sound record after this many bytes
DAY = 86400


@dataclass(frozen=True, slots=True)
class PcapHeader:
    little: bool
    nanos: bool
    snaplen: int
    linktype: int
    version: tuple[int, int]

    @property
    def ticks(self) -> int:
        """Timestamp fractions per second."""
        return 1_000_000_000 if self.nanos else 1_000_000

    @property
    def max_caplen(self) -> int:
        return max(MAX_SNAPLEN, min(self.snaplen, ABSURD_SNAPLEN))


def is_pcap(head: bytes) -> bool:
    """True when `head` starts with a classic pcap magic number in either byte order."""
    if len(head) < 4:
        return False
    return struct.unpack("<I", head[:4])[0] in (MAGIC_USEC, MAGIC_NSEC) or struct.unpack(
        ">I", head[:4]
    )[0] in (MAGIC_USEC, MAGIC_NSEC)


def parse_pcap_header(head: bytes, path: str = "<bytes>") -> PcapHeader:
    """Decode the 24-byte file header; BadInput when it is short or not believable."""
    if len(head) < 24:
        raise BadInput(
            f"truncated pcap file header ({len(head)} of 24 bytes)", path, len(head)
        )
    for little, fmt in ((True, "<"), (False, ">")):  # noqa: B007  (used after the loop)
        magic = struct.unpack(fmt + "I", head[:4])[0]
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            break
    else:
        raise BadInput("not a pcap file (unknown magic number)", path, 0)
    major, minor, _zone, _sigfigs, snaplen, network = struct.unpack(fmt + "HHiIII", head[4:24])
    if snaplen > ABSURD_SNAPLEN:
        raise BadInput(
            f"absurd snapshot length {snaplen} in the file header; the file is damaged", path, 16
        )
    return PcapHeader(little, magic == MAGIC_NSEC, snaplen, network & 0x0FFFFFFF, (major, minor))


def read_pcap(
    data: bytes | memoryview, path: str, damages: list[Damage],
    release: Callable[[int], None] = lambda _offset: None,
    span: tuple[int, int] | None = None,
    last_sec: int | None = None,
    border: int | None = None,
    until_damage: bool = False,
) -> Generator[RecordBatch, None, tuple[int, int | None]]:
    """Walk every record of a classic pcap held in `data` (usually an mmap).

    Damage found on the way is appended to `damages`; sound records are still yielded.
    Once a batch has been consumed, `release(offset)` says that nothing before `offset`
    is needed any more. `span` (first, stop): only the records from the one at `first`
    to the last that starts before `stop`; `last_sec`: the time of the record before it
    (what a resync after damage judges timestamps by). `border`: a batch also ends at
    each multiple of this many bytes (so that spans read apart make the same batches).
    `until_damage`: stop at the first header that cannot be right, without resyncing.
    Returns where reading stopped (the first record at or after `stop`, the end of the
    file, or the damage), and the time of the last record yielded.
    """
    hdr = parse_pcap_header(bytes(data[:24]), path)
    if hdr.linktype not in SUPPORTED:
        raise BadInput(
            f"link type {hdr.linktype} ({link_name(hdr.linktype)}) is not one rsthound reads; "
            f"it reads {supported_names()}", path, 20,
        )
    arr = np.frombuffer(data, dtype=np.uint8)
    end = len(arr)
    iface = [Interface(hdr.linktype, None, hdr.snaplen, 1 / hdr.ticks)]
    caplen_of = struct.Struct(("<" if hdr.little else ">") + "I").unpack_from
    limit = hdr.max_caplen
    off, stop = span if span is not None else (24, len(arr))
    walk = _Walker(arr, hdr, stop)
    ahead = np.zeros(0, dtype=np.int64)  # sound records walked, not yet in a batch
    while off < stop:
        # Sound records from `off` on, BATCH at most, up to the first header that cannot
        # be right (or the end of the file): `off` is then where that header is.
        stopped = False
        while len(ahead) < BATCH:
            run, nxt = walk.sound(int(ahead[-1]) if len(ahead) else off, bool(len(ahead)))
            ahead = np.concatenate([ahead, run])
            if nxt is None:
                stopped = True
                break
        take = BATCH
        if border and len(ahead):  # not across a border
            edge = (int(ahead[0]) // border + 1) * border
            take = min(take, int(np.searchsorted(ahead, edge)))
        starts, ahead = ahead[:take], ahead[take:]
        n = len(starts)
        if len(ahead):
            off = int(ahead[0])
        elif n:
            off = int(starts[-1]) + 16 + int(walk.caplen(starts[-1:])[0])
        if n:
            batch, bad = _columns(arr, starts, hdr, iface)
            for rec in bad:
                damages.append(Damage(path, rec, 16, "implausible record header (timestamp)"))
            if len(batch):
                last_sec = int(batch.ts[-1])
                yield batch
                release(off)
        if not stopped or len(ahead) or off >= stop:
            continue
        # `off` is where the walk stopped short of a sound record.
        if until_damage:
            return off, last_sec
        if off + 16 > end:
            damages.append(
                Damage(path, off, end - off, f"truncated record header ({end - off} of 16 bytes)")
            )
            return end, last_sec
        incl = caplen_of(data, off + 8)[0]
        if off + 16 + incl > end and incl <= limit:
            damages.append(
                Damage(
                    path,
                    off,
                    end - off,
                    f"truncated last record: it says {incl} bytes, {end - off - 16} remain",
                )
            )
            return end, last_sec
        nxt = _resync(arr, off, hdr, last_sec)
        reason = f"record length {incl} is impossible (snaplen {hdr.snaplen}); garbage in the file"
        if nxt is None:
            damages.append(Damage(path, off, end - off, reason + "; nothing readable after it"))
            return end, last_sec
        damages.append(Damage(path, off, nxt - off, reason))
        off = nxt
    return off, last_sec


REGION = 64 << 20  # bytes walked at a time
RANGE = 128 << 10  # bytes of a region each chain of records covers
WINDOW = 2048  # bytes searched from a range's start for the first record in it


class _Walker:
    """Finds where records start, without a Python step per record.

    The records of a region are a chain: each header's length says where the next one
    starts. The region is cut into ranges; the first record of each range is guessed (a
    header with a believable timestamp and lengths, whose next record is believable too),
    and all the chains are then stepped side by side, one numpy gather per step. Each
    chain must end exactly where the next range's guessed record starts; since the first
    chain starts at a known record, that proves every guess. A guess that fails, or any
    header whose lengths cannot be right, sends the region to the plain walk, which stops
    at the bad header as it always did.
    """

    def __init__(self, arr: np.ndarray, hdr: PcapHeader, stop: int | None = None) -> None:
        self.arr = arr
        self.hdr = hdr
        self.end = len(arr)
        self.stop = self.end if stop is None else min(stop, self.end)  # of the span read
        self.limit = hdr.max_caplen
        order = "<" if hdr.little else ">"
        self.u32 = unaligned(arr, order + "u4")

    def caplen(self, starts: np.ndarray) -> np.ndarray:
        return self.u32[starts + 8].astype(np.int64)

    def sound(self, start: int, after: bool) -> tuple[np.ndarray, int | None]:
        """Offsets of the sound records of the region from `start` (from the record after
        it, when `after`), and where the walk can go on (None: it stopped at a header
        that cannot be right, or at the end of the file)."""
        if after:
            start += 16 + int(self.caplen(np.array([start]))[0])
        if start + 16 > self.end or start >= self.stop:
            return np.zeros(0, dtype=np.int64), None
        stop = min(self.stop, start + REGION)
        got = self._chains(start, stop)
        if got is None:
            return self._plain(start, stop)
        return got

    def _plain(self, off: int, stop: int) -> tuple[np.ndarray, int | None]:
        """One record at a time (a region with damage, or a guess that failed)."""
        arr, end, limit = self.arr, self.end, self.limit
        unpack = struct.Struct(("<" if self.hdr.little else ">") + "I").unpack_from
        buf = arr.data
        out = []
        while off < stop and off + 16 <= end:
            incl = unpack(buf, off + 8)[0]
            if incl > limit or off + 16 + incl > end:
                return np.array(out, dtype=np.int64), None
            out.append(off)
            off += 16 + incl
        return np.array(out, dtype=np.int64), off if off + 16 <= end else None

    def _chains(self, start: int, stop: int) -> tuple[np.ndarray, int | None] | None:
        u32, end, limit = self.u32, self.end, self.limit
        sec0 = int(u32[start])
        k = (stop - start) // RANGE
        heads = [np.array([start], dtype=np.int64)]
        if k > 1:
            heads.append(self._guess(start + RANGE * np.arange(1, k, dtype=np.int64),
                                     sec0, stop))
        pos = np.concatenate(heads)
        nxt_head = np.r_[pos[1:], stop]
        chains = len(pos)
        steps = []
        live = np.arange(chains)
        while len(live):
            p = pos[live]
            if p[-1] + 16 > end:  # (chains run in order: the last is the furthest)
                return None
            after = p + 16 + u32[p + 8]
            steps.append((live, p))
            pos[live] = after
            live = live[after < nxt_head[live]]
        if not (pos[:-1] == nxt_head[:-1]).all() or pos[-1] > end:
            return None  # a guess was not a record, or a record goes past the end
        grid = np.full((len(steps), chains), -1, dtype=np.int64)
        for i, (which, p) in enumerate(steps):
            grid[i, which] = p
        flat = grid.T.ravel()
        found = flat[flat >= 0]
        last = int(pos[-1])
        # chains meet end to end, so the gaps are the records' lengths (and 16)
        if len(found) and ((np.diff(found) > limit + 16).any() or last - found[-1] > limit + 16):
            return None  # a length beyond any snaplen: the plain walk says where
        return found, (last if last + 16 <= end else None)

    def guess_near(self, at: int) -> int | None:
        """The seconds of a record that looks sound, within a window after `at`."""
        pos = np.arange(at, min(self.end - 16, at + WINDOW), dtype=np.int64)
        ok = pos[_plausible(self.arr, pos, self.hdr, None)]
        for p in ok.tolist():
            nxt = p + 16 + int(self.u32[p + 8])
            if nxt + 16 <= self.end and _plausible(self.arr, np.array([nxt]), self.hdr,
                                                   int(self.u32[p]))[0]:
                return int(self.u32[p])
        return None

    def _guess(self, at: np.ndarray, sec0: int, stop: int, width: int = 0) -> np.ndarray:
        """For each range start, the first offset in its window that looks like a record
        whose next record looks like one too; ranges without one are left out."""
        arr, u32 = self.arr, self.u32
        width = width or min(WINDOW, RANGE)
        win = np.ascontiguousarray(np.lib.stride_tricks.as_strided(
            arr[int(at[0]):], shape=(len(at), width), strides=(RANGE, 1), writeable=False))
        # a first look at one byte: the seconds' highest (it changes every 194 days);
        # _believable then reads the whole header where it matches
        top = 3 if self.hdr.little else 0
        flat = win.ravel()[top:]
        cand = np.zeros(len(flat), dtype=bool)
        for b in {((sec0 + d) >> 24) & 0xFF for d in (-DAY, DAY)}:
            cand |= flat == b
        row, col = np.divmod(np.flatnonzero(cand), width)
        q = at[row] + col
        ok = q + 16 <= stop
        q, row = q[ok], row[ok]
        good = _plausible(arr, q, self.hdr, sec0)
        q, row = q[good], row[good]
        nxt = q + 16 + u32[q + 8].astype(np.int64)
        good = (nxt == self.end) | (
            (nxt + 16 <= self.end) & _plausible(arr, np.minimum(nxt, self.end - 16), self.hdr,
                                                sec0))
        q, row = q[good], row[good]
        _, first = np.unique(row, return_index=True)  # the first in each range
        return q[first]


def first_record(data: bytes | memoryview, at: int) -> int | None:
    """The offset of the first record at or after `at` in a classic pcap, as far as can be
    told without walking from the start (a believable header whose next one is believable
    too); None when none is found in the next few megabytes. A guess: the caller proves it
    by walking up to it from the record before."""
    hdr = parse_pcap_header(bytes(data[:24]))
    arr = np.frombuffer(data, dtype=np.uint8)
    walk = _Walker(arr, hdr)
    if at <= 24:
        return 24
    sec0 = None
    probe = np.arange(at, min(len(arr) - 16, at + RESYNC_WINDOW), 4096, dtype=np.int64)
    for p in probe.tolist():  # a believable timestamp near `at`, to judge the others by
        got = walk.guess_near(p)
        if got is not None:
            sec0 = got
            break
    if sec0 is None:
        return None
    for lo in range(at, min(len(arr), at + RESYNC_WINDOW), WINDOW):
        starts = np.array([lo], dtype=np.int64)
        found = walk._guess(starts, sec0, len(arr), width=min(WINDOW, len(arr) - lo))
        if len(found):
            return int(found[0])
    return None


def _columns(
    arr: np.ndarray, starts: np.ndarray, hdr: PcapHeader, iface: list[Interface]
) -> tuple[RecordBatch, list[int]]:
    order = "<" if hdr.little else ">"
    # the record header and the packet's first bytes, in one trip to memory
    rows = rows_at(arr, starts, 16 + HEADROOM)
    rec = rows[:, :16].view(np.dtype([("sec", order + "u4"), ("frac", order + "u4"),
                                       ("caplen", order + "u4"), ("wirelen", order + "u4")]))[:, 0]
    sec, frac, caplen, wirelen = (rec[k].astype(np.int64) for k in rec.dtype.names)
    scale = hdr.ticks
    sound = frac < scale
    bad: list[int] = []
    if not sound.all():
        bad = starts[~sound].tolist()
        starts, sec, frac, caplen, wirelen, rows = (
            a[sound] for a in (starts, sec, frac, caplen, wirelen, rows)
        )
    ts = sec + frac / scale
    batch = RecordBatch(
        buf=arr,
        data_off=starts + 16,
        caplen=caplen,
        wirelen=wirelen,
        ts=ts,
        iface=np.zeros(len(starts), dtype=np.int32),
        interfaces=iface,
        rec_off=starts,
        head=rows,
    )
    return batch, bad


def _plausible(
    arr: np.ndarray, pos: np.ndarray, hdr: PcapHeader, last_sec: int | None,
) -> np.ndarray:
    u32 = unaligned(arr, ("<" if hdr.little else ">") + "u4")
    sec, frac, incl, orig = (u32[pos + k] for k in (0, 4, 8, 12))
    sec = sec.astype(np.int64)
    ok = (frac < hdr.ticks) & (incl <= hdr.max_caplen) & (incl <= orig) & (incl >= 14)
    if last_sec is not None:
        ok &= np.abs(sec - last_sec) <= DAY
    return ok & (pos + 16 + incl.astype(np.int64) <= len(arr))


def _resync(
    arr: np.ndarray, off: int, hdr: PcapHeader, last_sec: int | None,
) -> int | None:
    """The first offset after `off` where a record and the one after it both look sound."""
    end = len(arr)
    p0 = off + 1
    while p0 + 16 <= end and p0 - off < RESYNC_LIMIT:
        pos = np.arange(p0, min(end - 16, p0 + RESYNC_WINDOW) + 1, dtype=np.int64)
        for p in pos[_plausible(arr, pos, hdr, last_sec)].tolist():
            nxt = p + 16 + int(u32_at(arr, np.array([p + 8]), hdr.little)[0])
            if nxt == end:
                return p
            if nxt + 16 <= end and _plausible(
                arr, np.array([nxt], dtype=np.int64), hdr, last_sec
            )[0]:
                return p
        p0 = int(pos[-1]) + 1
    return None


def pcap_file_header(linktype: int, snaplen: int = MAX_SNAPLEN, nanos: bool = False) -> bytes:
    """The 24-byte header of a little-endian classic pcap file, as tcpdump -w writes it."""
    magic = MAGIC_NSEC if nanos else MAGIC_USEC
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(ts: float, packet: bytes, wirelen: int | None = None,
                nanos: bool = False) -> bytes:
    """One record (16-byte header and the packet) for a file from `pcap_file_header`."""
    sec = int(ts)
    scale = 1_000_000_000 if nanos else 1_000_000
    frac = min(scale - 1, round((ts - sec) * scale))
    length = len(packet) if wirelen is None else wirelen
    return struct.pack("<IIII", sec, frac, len(packet), length) + packet
