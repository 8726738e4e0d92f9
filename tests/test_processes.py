"""What is read of a process besides the trace: its cgroup (unit, container) and /proc."""

from __future__ import annotations

import os

from rsthound.formats.procpid import cgroup_owner
from rsthound.sources.processes import describe


def test_cgroup_names_the_unit_or_the_container():
    assert cgroup_owner("0::/system.slice/collector.service\n") == ("collector.service", None)
    docker = "0::/system.slice/docker-" + "3f" * 32 + ".scope\n"
    assert cgroup_owner(docker) == (None, "3f" * 32)
    kube = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + "a1" * 32 + ".scope\n"
    assert cgroup_owner(kube)[1] == "a1" * 32
    assert cgroup_owner("0::/user.slice/user-0.slice/session-3.scope\n") == (None, None)
    assert cgroup_owner("0::/\n") == (None, None)
    v1 = "12:pids:/system.slice/sshd.service\n1:name=systemd:/system.slice/sshd.service\n"
    assert cgroup_owner(v1) == ("sshd.service", None)


def test_describe_reads_proc():
    me = describe(os.getpid(), "<...>")
    assert me.pid == os.getpid() and me.comm and me.comm != "<...>"
    assert "pytest" in me.cmdline or "python" in me.cmdline
    assert me.netns == os.stat("/proc/self/ns/net").st_ino
    gone = describe(2**22 + 12345, "ghost")  # no such process: what the trace said
    assert (gone.comm, gone.cmdline, gone.user) == ("ghost", "ghost", None)


def test_a_process_from_an_older_or_newer_row_never_raises():
    """History rows keep processes as JSON: a field added or dropped since must not break
    reading them back."""
    from rsthound.model import Process, process_text

    newer = {"pid": 7, "comm": "x", "cmdline": "/bin/x -v", "user": "root", "unit": None,
             "container": None, "netns": 1, "cgroup": "/a/b", "started": 3.5}
    older = {"pid": 8, "comm": "y"}
    assert Process.from_obj(newer) == Process(7, "x", "/bin/x -v", "root", None, None, 1)
    assert Process.from_obj(older).text() == "y (pid 8)"
    assert process_text(None) == "an unknown process"
    assert process_text("garbage") == "an unknown process"
