"""pcapng files: sections of typed blocks (SHB, IDB, EPB, SPB, ...), either byte order.

    >>> shb = bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000")
    >>> is_pcapng(shb)
    True

Several interfaces with different link types may share a file; every packet record keeps the
index of its interface. Unknown block types are skipped by their length. A block whose length
fields disagree is damage: reported with its offset, and reading resumes at the next block
that looks sound.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import numpy as np

from rsthound.errors import BadInput
from rsthound.formats.linktypes import SUPPORTED, link_name
from rsthound.formats.records import BATCH, Interface, RecordBatch, u32_at
from rsthound.model import Damage
from rsthound.textforms import printable

SHB = 0x0A0D0D0A
IDB = 0x00000001
OLD_PB = 0x00000002
SPB = 0x00000003
EPB = 0x00000006
KNOWN = (SHB, IDB, OLD_PB, SPB, 0x4, 0x5, EPB, 0xA, 0xBAD, 0x40000BAD)
BYTE_ORDER_MAGIC = 0x1A2B3C4D
MAX_BLOCK = 64 << 20
RESYNC_LIMIT = 64 << 20


def is_pcapng(head: bytes) -> bool:
    return len(head) >= 12 and head[:4] == b"\x0a\x0d\x0d\x0a"


def parse_idb(body: bytes, fmt: str) -> Interface:
    """Interface Description Block body (after type and length) -> Interface.

    >>> parse_idb(bytes.fromhex("0100000000000400" "02000200" "6c6f0000" "00000000"), "<")
    Interface(linktype=1, name='lo', snaplen=262144, ts_scale=1e-06, ts_offset=0.0)
    """
    linktype, _res, snaplen = struct.unpack_from(fmt + "HHI", body, 0)
    name = None
    scale = 1e-6
    offset = 0.0
    for code, value in _options(body, 8, fmt):
        if code == 2:
            # from the file: whoever wrote it chose it, so no control characters pass
            name = printable(value.split(b"\0", 1)[0].decode("utf-8", "replace"))
        elif code == 9 and value:
            v = value[0]
            scale = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        elif code == 14 and len(value) >= 8:
            offset = float(struct.unpack(fmt + "q", value[:8])[0])
    return Interface(linktype, name, snaplen, scale, offset)


def _options(body: bytes, pos: int, fmt: str) -> Iterator[tuple[int, bytes]]:
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(fmt + "HH", body, pos)
        if code == 0:
            return
        value = body[pos + 4 : pos + 4 + length]
        yield code, value
        pos += 4 + ((length + 3) & ~3)


def read_pcapng(
    data: bytes | memoryview, path: str, damages: list[Damage],
    release: Callable[[int], None] = lambda _offset: None,
) -> Iterator[RecordBatch]:
    """Walk every packet block of a pcapng held in `data` (usually an mmap).

    `release(offset)`: as for `read_pcap`.
    """
    if not is_pcapng(bytes(data[:12])):
        raise BadInput("not a pcapng file (no section header block)", path, 0)
    arr = np.frombuffer(data, dtype=np.uint8)
    end = len(arr)
    fmt = "<"
    interfaces: list[Interface] = []
    section_base = 0  # interface ids are per section; ours index one list for the whole file
    off = 0
    epb: list[int] = []
    other: list[tuple[int, int, int, int, float, int]] = []  # rec, data, cap, wire, ts, iface

    def flush() -> RecordBatch | None:
        nonlocal epb, other
        if not epb and not other:
            return None
        batch, bad = _columns(arr, epb, other, fmt, interfaces, section_base)
        for off_bad, why in bad:
            damages.append(Damage(path, off_bad, 0, why + "; the packet is skipped"))
        epb, other = [], []
        return batch

    while off < end:
        if off + 12 > end:
            damages.append(Damage(path, off, end - off, f"truncated block ({end - off} bytes)"))
            break
        btype = struct.unpack_from(fmt + "I", data, off)[0]
        if btype == SHB:
            order = bytes(data[off + 8 : off + 12])
            fmt = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(order, "")
            if not fmt:
                fmt = "<"
                damages.append(Damage(path, off, 4, "section header with unknown byte order"))
        blen = struct.unpack_from(fmt + "I", data, off + 4)[0]
        problem = _block_problem(data, off, blen, end, fmt)
        if problem:
            if problem.startswith("truncated"):
                damages.append(Damage(path, off, end - off, problem))
                break
            nxt = _resync(arr, data, off, fmt)
            if nxt is None:
                damages.append(
                    Damage(path, off, end - off, problem + "; nothing readable after it"))
                break
            damages.append(Damage(path, off, nxt - off, problem))
            off = nxt
            continue
        if btype == EPB:
            epb.append(off)
        elif btype == SHB:
            b = flush()
            if b is not None:
                yield b
                release(off)
            section_base = len(interfaces)
        elif btype == IDB:
            ifc = parse_idb(bytes(data[off + 8 : off + blen - 4]), fmt)
            if ifc.linktype not in SUPPORTED:
                damages.append(Damage(
                    path, off, 0, f"interface {len(interfaces) - section_base} "
                    f"({ifc.name or 'unnamed'}) has link type {link_name(ifc.linktype)}, "
                    "which rsthound does not read: its packets are skipped"))
            interfaces.append(ifc)
        elif btype == SPB:
            if section_base < len(interfaces):
                wire = struct.unpack_from(fmt + "I", data, off + 8)[0]
                snap = interfaces[section_base].snaplen or MAX_BLOCK
                cap = min(wire, snap, blen - 16)
                other.append((off, off + 12, cap, wire, float("nan"), section_base))
            else:
                damages.append(Damage(path, off, blen, "simple packet block before any interface"))
        elif btype == OLD_PB:
            if_id, _drops, hi, lo, cap, wire = struct.unpack_from(fmt + "HHIIII", data, off + 8)
            idx = section_base + if_id
            if idx < len(interfaces) and cap <= blen - 32:
                ifc = interfaces[idx]
                ts = ((hi << 32) | lo) * ifc.ts_scale + ifc.ts_offset
                other.append((off, off + 28, cap, wire, ts, idx))
            else:
                damages.append(
                    Damage(path, off, blen, "packet block with a bad interface or length"))
        off += blen
        if len(epb) + len(other) >= BATCH:
            b = flush()
            if b is not None:
                yield b
                release(off)
    b = flush()
    if b is not None:
        yield b


def _block_problem(data: bytes | memoryview, off: int, blen: int, end: int, fmt: str) -> str:
    if blen < 12 or blen % 4 or blen > MAX_BLOCK:
        return f"impossible block length {blen}"
    if off + blen > end:
        return f"truncated last block: it says {blen} bytes, {end - off} remain"
    if struct.unpack_from(fmt + "I", data, off + blen - 4)[0] != blen:
        return "block length fields disagree"
    return ""


def _resync(arr: np.ndarray, data: bytes | memoryview, off: int, fmt: str) -> int | None:
    """The next offset (4-byte steps) holding a known block whose two lengths agree."""
    end = len(arr)
    little = fmt == "<"
    p0 = off + 4
    while p0 + 12 <= end and p0 - off < RESYNC_LIMIT:
        pos = np.arange(p0, min(end - 12, p0 + (1 << 20)) + 1, 4, dtype=np.int64)
        btype = u32_at(arr, pos, little)
        blen = u32_at(arr, pos + 4, little).astype(np.int64)
        ok = np.isin(btype, KNOWN) & (blen >= 12) & (blen % 4 == 0) & (pos + blen <= end)
        for p in pos[ok].tolist():
            blen_p = struct.unpack_from(fmt + "I", data, p + 4)[0]
            if not _block_problem(data, p, blen_p, end, fmt):
                return p
        p0 = int(pos[-1]) + 4
    return None


def _columns(
    arr: np.ndarray,
    epb: list[int],
    other: list[tuple[int, int, int, int, float, int]],
    fmt: str,
    interfaces: list[Interface],
    section_base: int,
) -> tuple[RecordBatch, list[tuple[int, str]]]:
    little = fmt == "<"
    rec = np.array(epb, dtype=np.int64)
    if_id = u32_at(arr, rec + 8, little).astype(np.int64) + section_base
    known = if_id < len(interfaces)
    bad = [(o, "packet block names an interface that was never described")
           for o in rec[~known].tolist()]
    rec, if_id = rec[known], if_id[known]
    hi = u32_at(arr, rec + 12, little).astype(np.uint64)
    lo = u32_at(arr, rec + 16, little).astype(np.uint64)
    cap = u32_at(arr, rec + 20, little).astype(np.int64)
    wire = u32_at(arr, rec + 24, little).astype(np.int64)
    scale = np.array([i.ts_scale for i in interfaces] or [1e-6])[if_id]
    shift = np.array([i.ts_offset for i in interfaces] or [0.0])[if_id]
    ts = ((hi << np.uint64(32)) | lo).astype(np.float64) * scale + shift
    blen = u32_at(arr, rec + 4, little).astype(np.int64)
    fits = cap <= blen - 32
    bad += [(o, "packet block shorter than the packet length it states")
            for o in rec[~fits].tolist()]
    cols = [rec[fits], rec[fits] + 28, cap[fits], wire[fits], ts[fits], if_id[fits]]
    if other:
        extra = list(zip(*other, strict=True))
        cols = [
            np.concatenate([c, np.array(e, dtype=c.dtype)])
            for c, e in zip(cols, extra, strict=True)
        ]
        order = np.argsort(cols[0], kind="stable")
        cols = [c[order] for c in cols]
        # Simple packet blocks carry no time: give them the time of the record before.
        ts = cols[4]
        nan = np.isnan(ts)
        if nan.any():
            idx = np.where(~nan, np.arange(len(ts)), 0)
            np.maximum.accumulate(idx, out=idx)
            ts[nan] = np.where(np.isnan(ts[idx]), 0.0, ts[idx])[nan]
    return RecordBatch(
        buf=arr,
        data_off=cols[1],
        caplen=cols[2],
        wirelen=cols[3],
        ts=cols[4],
        iface=cols[5].astype(np.int32),
        interfaces=interfaces,
        rec_off=cols[0],
    ), bad
