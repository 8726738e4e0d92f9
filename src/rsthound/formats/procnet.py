"""/proc/net/snmp and /proc/net/netstat: counters by name, whatever the kernel's field order.

Both files are pairs of lines with the same prefix, the names and then the values:

    >>> parse_proc_net("Tcp: ActiveOpens AttemptFails\\nTcp: 59 1\\n", "snmp", [])
    {'Tcp.ActiveOpens': 59, 'Tcp.AttemptFails': 1}

Fields come and go between kernels, so nothing is looked up by position. A pair that cannot
be read is described in `problems` (with its line number and the line); every value that
can still be placed counts.
"""

from __future__ import annotations


def parse_proc_net(text: str, path: str, problems: list[str]) -> dict[str, int]:
    """Counters keyed "Prefix.Name" (Tcp.AttemptFails); broken pairs go to `problems`."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        names_line = lines[i]
        if not names_line.strip():
            i += 1
            continue
        prefix, sep, names = names_line.partition(":")
        if not sep or not prefix or " " in prefix:
            problems.append(_where(path, i, names_line, "expected 'Prefix: Name Name ...'"))
            i += 1
            continue
        if i + 1 >= len(lines):
            problems.append(_where(path, i, names_line, f"no line of values for {prefix}"))
            break
        values_line = lines[i + 1]
        vprefix, vsep, values = values_line.partition(":")
        if not vsep or vprefix != prefix:
            problems.append(_where(path, i + 1, values_line,
                                   f"expected the values of {prefix} after its names"))
            i += 1
            continue
        keys, vals = names.split(), values.split()
        if len(vals) > len(keys):  # which value belongs to which name is anyone's guess
            problems.append(_where(path, i + 1, values_line,
                                   f"{len(vals)} values for {len(keys)} names of {prefix}"))
            i += 2
            continue
        if len(vals) < len(keys):  # cut short: the values there are still in place
            problems.append(_where(
                path, i + 1, values_line,
                f"{len(vals)} values for {len(keys)} names of {prefix} (line cut short; "
                f"{', '.join(keys[len(vals):][:3])}{'...' if len(keys) - len(vals) > 3 else ''}"
                " not read)"))
        for k, v in zip(keys, vals, strict=False):
            try:
                out[f"{prefix}.{k}"] = int(v)
            except ValueError:
                problems.append(_where(path, i + 1, values_line,
                                       f"{v!r} is not a number (the value of {prefix}.{k})"))
        i += 2
    return out


def _where(path: str, index: int, line: str, what: str) -> str:
    shown = line if len(line) <= 60 else line[:57] + "..."
    return f"{path}: line {index + 1}: {what}: {shown!r}"


_SNMP6 = ("Icmp6", "Ip6", "UdpLite6", "Udp6")  # longest first where one starts another


def parse_snmp6(text: str, path: str, problems: list[str]) -> dict[str, int]:
    """/proc/net/snmp6: one "NameValue" pair a line, the group glued to the name.

    >>> parse_snmp6("Ip6InReceives  \\t7\\nIcmp6InDestUnreachs\\t2\\n", "snmp6", [])
    {'Ip6.InReceives': 7, 'Icmp6.InDestUnreachs': 2}
    """
    out: dict[str, int] = {}
    for i, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields:
            continue
        group = next((g for g in _SNMP6 if fields[0].startswith(g)), None)
        if len(fields) != 2 or group is None or not fields[1].isdigit():
            problems.append(_where(path, i, line, "expected 'Group6Name value'"))
            continue
        out[f"{group}.{fields[0][len(group):]}"] = int(fields[1])
    return out
