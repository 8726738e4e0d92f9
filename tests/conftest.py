"""Shared test fixtures: the in-process CLI, golden data, and the kernel-test gate."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rsthound.cli import main

DATA = Path(__file__).parent / "data"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture
def cli():
    """Run rsthound in-process: cli("analyze", "x.pcap") -> Result(code, out, err)."""

    def run(*argv: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main([str(a) for a in argv], stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="session")
def expected() -> dict:
    return json.loads((DATA / "expected.json").read_text())


def need_root_tools(*tools: str) -> None:
    """Skip (with the reason printed by -ra) unless root and the named programs exist."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces); CI runs as root")
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"needs {t} (make test installs it as root)")
