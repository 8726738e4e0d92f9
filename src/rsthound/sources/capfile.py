"""Open a capture file (pcap or pcapng, told apart by content) and walk its records."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from rsthound.errors import BadInput
from rsthound.formats import linktypes as lt
from rsthound.formats.pcap import first_record, is_pcap, read_pcap
from rsthound.formats.pcapng import is_pcapng, read_pcapng
from rsthound.formats.records import RecordBatch
from rsthound.model import Damage


def read_capture(path: str, damages: list[Damage], span: tuple[int, int] | None = None,
                 last_sec: int | None = None, border: int | None = None,
                 until_damage: bool = False,
                 ) -> Generator[RecordBatch, None, tuple[int, int | None] | None]:
    """Yield the record batches of the capture at `path` ("-": standard input), read
    through a memory map when it is a regular file, else read whole.

    BadInput when the file cannot be opened or is no capture at all; damage inside a
    capture is appended to `damages` and reading goes on. `span` (first record, stop),
    classic pcap only: the records from `first` to the last that starts before `stop`;
    then the return value is where the next record starts and the last record's time
    (`last_sec`, `border`, `until_damage`: as `read_pcap` takes them).
    """
    try:
        fd = os.dup(0) if path == "-" else os.open(path, os.O_RDONLY)
    except OSError as e:
        raise BadInput(_open_error(e), path) from None
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, fd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise BadInput("is a directory, not a capture file", path)
        data: mmap.mmap | bytes
        if stat.S_ISREG(st.st_mode):
            if st.st_size == 0:
                raise BadInput("empty file, not a capture", path, 0)
            try:
                data = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            except (OSError, ValueError) as e:
                raise BadInput(f"cannot map the file: {e}", path) from None
            stack.callback(_unmap, data)
        else:  # a pipe or a device: read it whole
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            if not data:
                raise BadInput("empty input, not a capture", path, 0)
        head = data[:12]
        release = _releaser(data) if isinstance(data, mmap.mmap) else (lambda _off: None)
        if is_pcap(head):
            return (yield from read_pcap(data, path, damages, release, span, last_sec,
                                         border, until_damage))
        if span is not None:
            raise BadInput("only a classic pcap file can be read in parts", path, 0)
        if is_pcapng(head):
            reader = read_pcapng(data, path, damages, release)
        else:
            raise BadInput(
                "not a capture: neither pcap nor pcapng (expected a file from tcpdump -w, "
                "dumpcap or Wireshark)", path, 0,
            )
        yield from reader
        return None


def record_near(path: str, at: int) -> int | None:
    """Where the first record at or after byte `at` of a classic pcap file seems to start
    (a guess, to be proved by walking up to it); None when the file is not one."""
    with open(path, "rb") as f:
        if not is_pcap(f.read(4)) or os.fstat(f.fileno()).st_size <= at:
            return None
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            return first_record(data, at)


def _releaser(data: mmap.mmap) -> Callable[[int], None]:
    """Drop pages already read from this process's memory (they stay in the page cache), so
    that resident memory stays flat however big the file is."""
    done = 0

    def release(upto: int) -> None:
        nonlocal done
        aligned = upto - upto % mmap.PAGESIZE
        if aligned > done:
            with contextlib.suppress(OSError, ValueError):
                data.madvise(mmap.MADV_DONTNEED, done, aligned - done)
            done = aligned

    return release


def _unmap(data: mmap.mmap) -> None:
    # The caller may still hold the last batch (a numpy view of the map); the map is then
    # released by the garbage collector instead.
    with contextlib.suppress(BufferError):
        data.close()


def _open_error(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "no such file"
    if e.errno == errno.EACCES:
        return "permission denied (run as a user who can read it, or copy it somewhere readable)"
    if e.errno == errno.EISDIR:
        return "is a directory, not a capture file"
    return e.strerror or str(e)


# A file's link type (LINKTYPE_*) where libpcap's compiler wants another number (DLT_*)
DLT_OF = {lt.RAW: 12}  # LINKTYPE_RAW is DLT_RAW (12) on Linux


class PacketFilter:
    """A tcpdump filter expression over packets that are not captured live (records read
    from files, a SYN made up for a connect the trace saw): libpcap compiles it once per
    link type, and runs it on each packet (in Python's loop: about a microsecond a
    packet)."""

    def __init__(self, expression: str, check: bool = True) -> None:
        import cypcap

        self._cypcap = cypcap
        self.expression = expression
        self._programs: dict[int, object] = {}
        if check:  # on Ethernet: a bad expression is said before any file is read
            self.program(lt.EN10MB)

    def program(self, linktype: int) -> Any:
        prog = self._programs.get(linktype)
        if prog is None:
            c = self._cypcap
            try:
                prog = c.compile(DLT_OF.get(linktype, linktype), 262144, self.expression,
                                 True, c.NETMASK_UNKNOWN)
            except (c.Error, ValueError) as e:
                msg = e.args[-1] if e.args else e
                raise BadInput(f"not a filter expression libpcap accepts: {msg}",
                               self.expression) from None
            self._programs[linktype] = prog
        return prog

    def takes(self, linktype: int, packet: bytes, wirelen: int | None = None) -> bool:
        """Whether the expression takes this packet (of this link type)."""
        hdr = self._cypcap.Pkthdr(ts=0.0, caplen=len(packet),
                                  len=len(packet) if wirelen is None else wirelen)
        return bool(self.program(linktype).offline_filter(hdr, packet))

    def batch(self, b: RecordBatch) -> RecordBatch:
        """The records of `b` the expression takes."""
        if not len(b):
            return b
        keep = np.fromiter(
            (self.takes(b.interfaces[int(b.iface[i])].linktype, b.packet(i),
                        int(b.wirelen[i])) for i in range(len(b))),
            dtype=bool, count=len(b))
        return RecordBatch(b.buf, b.data_off[keep], b.caplen[keep], b.wirelen[keep], b.ts[keep],
                           b.iface[keep], b.interfaces, b.rec_off[keep],
                           None if b.head is None else b.head[keep])
