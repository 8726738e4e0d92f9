"""Classic libpcap files: a 24-byte header, then 16-byte record headers each before a packet.

    >>> parse_pcap_header(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    PcapHeader(little=True, nanos=False, snaplen=65535, linktype=1, version=(2, 4))

Records are walked into column batches (`RecordBatch`). A record whose header cannot be
right (length beyond the file or beyond any snaplen) is damage: it is reported with its byte
offset, and reading resumes at the next place where two records in a row look sound.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from rsthound.errors import BadInput
from rsthound.formats.linktypes import SUPPORTED, link_name, supported_names
from rsthound.formats.records import BATCH, Interface, RecordBatch, u32_at
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
) -> Iterator[RecordBatch]:
    """Walk every record of a classic pcap held in `data` (usually an mmap).

    Damage found on the way is appended to `damages`; sound records are still yielded.
    Once a batch has been consumed, `release(offset)` says that nothing before `offset`
    is needed any more.
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
    off = 24
    last_sec: int | None = None
    while off < end:
        starts: list[int] = []
        append = starts.append
        n = 0
        # The hot loop: one struct call per record; everything else is vectorised below.
        while n < BATCH and off + 16 <= end:
            incl = caplen_of(data, off + 8)[0]
            if incl > limit or off + 16 + incl > end:
                break
            append(off)
            off += 16 + incl
            n += 1
        if starts:
            batch, bad = _columns(arr, np.array(starts, dtype=np.int64), hdr, iface)
            for rec in bad:
                damages.append(Damage(path, rec, 16, "implausible record header (timestamp)"))
            if len(batch):
                last_sec = int(batch.ts[-1])
                yield batch
                release(off)
        if n == BATCH or off >= end:
            continue
        # `off` is where the walk stopped short of a sound record.
        if off + 16 > end:
            damages.append(
                Damage(path, off, end - off, f"truncated record header ({end - off} of 16 bytes)")
            )
            return
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
            return
        nxt = _resync(arr, off, hdr, last_sec)
        reason = f"record length {incl} is impossible (snaplen {hdr.snaplen}); garbage in the file"
        if nxt is None:
            damages.append(Damage(path, off, end - off, reason + "; nothing readable after it"))
            return
        damages.append(Damage(path, off, nxt - off, reason))
        off = nxt


def _columns(
    arr: np.ndarray, starts: np.ndarray, hdr: PcapHeader, iface: list[Interface]
) -> tuple[RecordBatch, list[int]]:
    sec = u32_at(arr, starts, hdr.little).astype(np.int64)
    frac = u32_at(arr, starts + 4, hdr.little).astype(np.int64)
    caplen = u32_at(arr, starts + 8, hdr.little).astype(np.int64)
    wirelen = u32_at(arr, starts + 12, hdr.little).astype(np.int64)
    scale = hdr.ticks
    sound = frac < scale
    bad: list[int] = []
    if not sound.all():
        bad = starts[~sound].tolist()
        starts, sec, frac, caplen, wirelen = (
            a[sound] for a in (starts, sec, frac, caplen, wirelen)
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
    )
    return batch, bad


def _plausible(
    arr: np.ndarray, pos: np.ndarray, hdr: PcapHeader, last_sec: int | None,
) -> np.ndarray:
    sec = u32_at(arr, pos, hdr.little).astype(np.int64)
    frac = u32_at(arr, pos + 4, hdr.little)
    incl = u32_at(arr, pos + 8, hdr.little)
    orig = u32_at(arr, pos + 12, hdr.little)
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
