"""tracefs binary records: event formats (`events/*/*/format`) and `trace_pipe_raw` pages.

Reading the binary ring buffer spares the kernel formatting each event as text and spares
Python parsing it back: under a storm of failing connects that is most of the cost of
tracing. The layouts come from the kernel's own files (`events/header_page`, each event's
`format`), so nothing here is copied from kernel headers but the page's event header
types, which `events/header_event` documents.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 29, 30, 31  # events/header_event
_FIELD = re.compile(r"field:([^;]*?)\s*(\w+)(?:\[(\d+)\])?;\s*offset:(\d+);\s*size:(\d+);"
                    r"\s*signed:(\d+);")
_SYMBOLIC = re.compile(r"__print_symbolic\(REC->(\w+),((?:\s*\{\s*-?\d+,\s*\"[^\"]*\"\s*\},?)+)")
_PAIR = re.compile(r"\{\s*(-?\d+),\s*\"([^\"]*)\"\s*\}")


@dataclass
class EventFormat:
    """One event's binary layout, from its `format` file."""

    name: str
    id: int
    fields: dict[str, tuple[int, int, bool]] = field(default_factory=dict)  # offset, size, signed
    symbols: dict[str, dict[int, str]] = field(default_factory=dict)  # field -> value -> name

    def get(self, rec: bytes | memoryview, name: str) -> int:
        """An integer field of a record (native byte order, as the kernel wrote it)."""
        off, size, signed = self.fields[name]
        return int.from_bytes(rec[off:off + size], sys.byteorder, signed=signed)

    def raw(self, rec: bytes | memoryview, name: str) -> bytes:
        off, size, _ = self.fields[name]
        return bytes(rec[off:off + size])

    def symbol(self, name: str, value: int) -> str:
        return self.symbols.get(name, {}).get(value, str(value))


def parse_format(text: str) -> EventFormat:
    """An event's `format` file: its name, id, fields and the names print fmt gives values.

    >>> f = parse_format('name: x\\nID: 7\\nformat:\\n\\tfield:int state;\\toffset:8;\\tsize:4;'
    ...                  '\\tsigned:1;\\n\\nprint fmt: "%s", __print_symbolic(REC->state, '
    ...                  '{ 1, "ONE" }, { 2, "TWO" })')
    >>> f.id, f.fields["state"], f.symbol("state", 2)
    (7, (8, 4, True), 'TWO')
    """
    name = re.search(r"^name:\s*(\S+)", text, re.M)
    ident = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name or not ident:
        raise ValueError("not an event format: no name or ID")
    fmt = EventFormat(name[1], int(ident[1]))
    for _type, fname, _count, off, size, signed in _FIELD.findall(text):
        fmt.fields[fname] = (int(off), int(size), signed == "1")
    for fname, pairs in _SYMBOLIC.findall(text):
        fmt.symbols.setdefault(fname, {int(v): s for v, s in _PAIR.findall(pairs)})
    return fmt


def page_records(page: bytes) -> Iterator[memoryview]:
    """The event records of one `trace_pipe_raw` page, without their times."""
    for _ts, rec in page_events(page):
        yield rec


def page_events(page: bytes) -> Iterator[tuple[int, memoryview]]:
    """(timestamp, record) of each event of one `trace_pipe_raw` page. The header is a u64
    timestamp and a u64 commit whose low bits are the data's size, data from byte 16; each
    event's header holds its time since the previous one (27 bits, and TIME_EXTEND for
    more), in the instance's trace_clock (nanoseconds)."""
    if len(page) < 16:
        return
    ts, commit = struct.unpack_from("=QQ", page, 0)
    size = commit & 0xFFFFF  # high bits: missed-event flags
    view = memoryview(page)
    end = min(len(page), 16 + size)
    off = 16
    while off + 4 <= end:
        head = struct.unpack_from("=I", page, off)[0]
        kind = head & 31
        delta = head >> 5
        if kind == TYPE_PADDING:
            if off + 8 > end:
                return
            off += 4 + struct.unpack_from("=I", page, off + 4)[0]
        elif kind == TYPE_TIME_EXTEND:
            if off + 8 > end:
                return
            ts += (struct.unpack_from("=I", page, off + 4)[0] << 27) + delta
            off += 8
        elif kind == TYPE_TIME_STAMP:
            if off + 8 > end:
                return
            ts = (ts & ~((1 << 59) - 1)) | (struct.unpack_from("=I", page, off + 4)[0] << 27
                                           ) + delta
            off += 8
        elif kind == 0:
            if off + 8 > end:
                return
            ts += delta
            length = (struct.unpack_from("=I", page, off + 4)[0] - 4 + 3) & ~3
            yield ts, view[off + 8:off + 8 + length]
            off += 8 + length
        else:
            ts += delta
            yield ts, view[off + 4:off + 4 + kind * 4]
            off += 4 + kind * 4


def sockaddr(raw: bytes) -> tuple[str, int] | None:
    """A `struct sockaddr_in` or `_in6` as tcp_send_reset stores it: (address, port)."""
    if len(raw) < 8:
        return None
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None
