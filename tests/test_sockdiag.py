"""The /proc/net/tcp fallback of `listeners`, on text in the kernel's layout
(tests/data/proc/listeners: a listener with 2 waiting, a connection, an IPv6 listener)."""

from __future__ import annotations

from pathlib import Path

from rsthound.sources.sockdiag import _proc

DATA = Path(__file__).parent / "data" / "proc" / "listeners"


def test_proc_fallback_reads_listeners_only():
    got = [(x.addr, x.port, x.queue, x.backlog, x.drops, x.uid, x.inode)
           for x in _proc(str(DATA))]
    assert got == [("127.0.0.1", 7300, 2, None, None, 1000, 4242),
                   ("::1", 7301, 0, None, None, 0, 4244)]


def test_port_names_from_services_and_socket_units(tmp_path):
    from rsthound.sources.portnames import port_name

    (tmp_path / "collector.socket").write_text("[Socket]\nListenStream=127.0.0.1:7211\n")
    (tmp_path / "other.socket").write_text("[Socket]\nListenStream=/run/other.sock\n")
    (tmp_path / "v6.socket").write_text("[Socket]\nListenStream=[::]:7211\n")
    got = port_name(7211, (str(tmp_path),))
    assert got.units == ("collector.socket", "v6.socket") and got.service is None
    assert "declared by collector.socket, v6.socket" in got.text()
    if Path("/etc/services").exists():  # Debian's netbase
        assert port_name(22, (str(tmp_path),)).service == "ssh"
