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


def unit_values(key: str) -> set[str]:
    """The words of a key of the unit (all its lines)."""
    return {w for ln in UNIT.read_text().splitlines() if ln.startswith(f"{key}=")
            for w in ln.split("=", 1)[1].split()}


def doc_list(name: str) -> set[str]:
    """A list of docs/privileges.md: '- NAME: WORD WORD ...'."""
    doc = (Path(__file__).parent.parent / "docs" / "privileges.md").read_text()
    line = next(ln for ln in doc.splitlines() if ln.startswith(f"- {name}: "))
    return set(line.split(": ", 1)[1].split())


def test_the_unit_grants_what_the_docs_list_and_nothing_more():
    assert unit_values("CapabilityBoundingSet") == doc_list("capabilities")
    assert unit_values("RestrictAddressFamilies") == doc_list("address families")
    written = unit_values("ReadWritePaths") | {
        f"/var/lib/{d}" for d in unit_values("StateDirectory")}
    assert written == doc_list("paths written")
    text = UNIT.read_text()
    assert "AmbientCapabilities" not in text and "DynamicUser=yes" not in text
    assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text


def test_the_code_opens_no_address_family_the_unit_forbids():
    """Every socket family the source names is allowed (AF_PACKET is libpcap's)."""
    import re

    src = Path(__file__).parent.parent / "src" / "rsthound"
    used = {f"AF_{m}" for p in src.rglob("*.py")
            for m in re.findall(r"socket\.AF_([A-Z0-9]+)", p.read_text())}
    assert used and used <= unit_values("RestrictAddressFamilies"), used


def test_the_unit_runs_watch_as_its_own_user_with_the_evidence():
    argv = exec_start()
    args = build_parser().parse_args(argv[1:])
    assert args.user == "rsthound" and not args.no_capture and not args.listen
    sysusers = (UNIT.parent / "rsthound.sysusers").read_text()
    assert any(ln.split()[:2] == ["u", "rsthound"] for ln in sysusers.splitlines())
