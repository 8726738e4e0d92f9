"""contrib/: the systemd unit is one systemd accepts, and its command is one rsthound takes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsthound.cli import build_parser

UNIT = Path(__file__).parent.parent / "contrib" / "rsthound-watch.service"


def exec_start() -> list[str]:
    line = next(ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_unit_command_is_a_valid_watch():
    argv = exec_start()
    assert argv[0].endswith("/rsthound") and argv[1] == "watch"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "watch" and args.db is None  # history goes to $STATE_DIRECTORY
    assert "StateDirectory=rsthound" in UNIT.read_text()


def test_systemd_accepts_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (systemd)")
    rsthound = Path(sys.executable).parent / "rsthound"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(exec_start()[0], str(rsthound)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
