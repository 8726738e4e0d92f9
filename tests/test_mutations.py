"""Damaged copies of the golden captures (bytes flipped, cut out, inserted): rsthound must
answer each with a result or a one-line error, never a traceback. Deterministic (seeded);
the longer fuzzing campaign belongs to the hardening work (issue 7)."""

from __future__ import annotations

import random

import pytest

from conftest import DATA
from rsthound.cli import Exit

FILES = sorted(DATA.glob("*.pcap*"))


def mutate(raw: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(raw)
    for _ in range(rnd.randint(1, 20)):
        pos = rnd.randrange(len(buf))
        op = rnd.random()
        if op < 0.6:
            buf[pos] = rnd.randrange(256)
        elif op < 0.8:
            del buf[pos : pos + rnd.randint(1, 50)]
        else:
            buf[pos:pos] = rnd.randbytes(rnd.randint(1, 50))
    return bytes(buf) or b"\0"


@pytest.mark.parametrize("seed", range(8))
def test_mutated_captures_never_crash(cli, tmp_path, seed):
    rnd = random.Random(seed)
    for i in range(40):
        src = rnd.choice(FILES)
        f = tmp_path / f"m{i}{src.suffix}"
        f.write_bytes(mutate(src.read_bytes(), rnd))
        for mode in ("--json", "--conns"):
            r = cli("analyze", mode, f)
            assert r.code in (Exit.OK, Exit.ERROR, Exit.DAMAGED), (src.name, r.err)
            assert "Traceback" not in r.err
            if r.code == Exit.ERROR:
                assert r.err.count("\n") == 1 and r.err.startswith(f"rsthound: {f}"), r.err
