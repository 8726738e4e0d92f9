"""A batch of capture records, as columns, whichever file format they came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BATCH = 65536  # records per batch: big enough to vectorise, small enough for bounded memory
HEADROOM = 96  # a packet's first bytes read with its record: two VLAN tags, IPv6 and TCP


@dataclass(frozen=True, slots=True)
class Interface:
    """A capture interface as a file describes it (pcapng IDB; one implicit one for pcap)."""

    linktype: int
    name: str | None = None
    snaplen: int = 0
    ts_scale: float = 1e-6  # seconds per timestamp unit
    ts_offset: float = 0.0


@dataclass(slots=True)
class RecordBatch:
    """Up to BATCH packet records; `buf[data_off[i] : data_off[i] + caplen[i]]` is packet i.

    `buf` is a uint8 view of the input (usually the whole mapped file); `iface` indexes
    `interfaces`; `rec_off` is where each record starts in the file (for messages).
    """

    buf: np.ndarray
    data_off: np.ndarray  # int64
    caplen: np.ndarray  # int64
    wirelen: np.ndarray  # int64
    ts: np.ndarray  # float64 seconds
    iface: np.ndarray  # int32 into `interfaces`
    interfaces: list[Interface]
    rec_off: np.ndarray  # int64
    # each record's 16-byte header and its packet's first HEADROOM bytes, when the reader
    # gathered them together (one trip to memory): contiguous rows of uint8, else None
    head: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.data_off)

    def packet(self, i: int) -> bytes:
        start = int(self.data_off[i])
        return self.buf[start : start + int(self.caplen[i])].tobytes()


def u32_at(buf: np.ndarray, off: np.ndarray, little: bool) -> np.ndarray:
    """Gather a 32-bit unsigned integer at each offset of `off` (any alignment)."""
    b = [buf[off + k].astype(np.uint32) for k in range(4)]
    if little:
        return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)
    return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]


def unaligned(buf: np.ndarray, dtype: str) -> np.ndarray:
    """A view of `buf` where element i is the `dtype` value starting at byte i (so one
    gather reads a multi-byte field at any offset)."""
    size = np.dtype(dtype).itemsize
    return np.ndarray(shape=(max(0, len(buf) - size + 1),), dtype=dtype, buffer=buf,
                      strides=(1,))


def rows_at(buf: np.ndarray, off: np.ndarray, width: int) -> np.ndarray:
    """The `width` bytes from each offset, as one row each (bytes past the end of `buf`
    read as zero): one gather for all the fields of a header."""
    n = len(buf)
    off = np.maximum(off, 0)
    inside = off <= n - width
    if n >= width and inside.all():
        return unaligned(buf, f"V{width}")[off].view(np.uint8).reshape(-1, width)
    out = np.zeros((len(off), width), dtype=np.uint8)
    if n >= width:
        rows = unaligned(buf, f"V{width}")
        out[inside] = rows[off[inside]].view(np.uint8).reshape(-1, width)
    for i in np.flatnonzero(~inside).tolist():  # the last few bytes of the input
        tail = buf[int(off[i]):]
        out[i, :len(tail)] = tail
    return out
