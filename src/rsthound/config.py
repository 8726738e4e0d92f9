"""The `watch` configuration file (TOML): alert rules and where notifications go.

    [rules.failed-connections]      # change a default rule
    warn = 2
    for = 3

    [rules.aborts]                  # or add one, on any counter of `rsthound counters`
    metric = "TcpExt.TCPAbortOnTimeout"
    title = "connections aborted by timeout"
    warn = 0.5

    [baseline.failed-connections-unusual]
    factor = 5

    [notify]
    webhook = "https://hooks.example/rsthound"
    alertmanager = "http://127.0.0.1:9093"

Errors name the file, the line and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from rsthound.analyze.alerts import DEFAULT_BASELINES, DEFAULT_RULES, Baseline, Rule
from rsthound.errors import BadInput
from rsthound.metrics import BY_NAME

_KEYS = {"for": "for_samples"}  # TOML spelling -> field name
_KEYS_BACK = {v: k for k, v in _KEYS.items()}
_NOTIFY = {"webhook", "alertmanager", "host"}


@dataclass
class Config:
    rules: tuple[Rule, ...] = DEFAULT_RULES
    baselines: tuple[Baseline, ...] = DEFAULT_BASELINES
    webhook: str | None = None
    alertmanager: str | None = None
    host: str | None = None
    source: str = "(defaults)"


def load_config(path: str | None) -> Config:
    """The defaults, changed by the file at `path` when given."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BadInput(e.strerror or str(e), path) from None
    text = raw.decode("utf-8", "replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        where = f"line {m.group(1)}: " if m else ""
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise BadInput(f"{where}not valid TOML: {msg}", path) from None
    cfg = Config(source=path)
    for key in data:
        if key not in ("rules", "baseline", "notify"):
            _bad(path, text, key, None, "unknown section (known: rules, baseline, notify)")
    cfg.rules = _merge(path, text, "rules", data.get("rules", {}), DEFAULT_RULES, Rule)
    cfg.baselines = _merge(path, text, "baseline", data.get("baseline", {}), DEFAULT_BASELINES,
                           Baseline)
    notify = data.get("notify", {})
    for k, v in notify.items():
        if k not in _NOTIFY:
            _bad(path, text, k, "notify", f"unknown key (known: {', '.join(sorted(_NOTIFY))})")
        if not isinstance(v, str) or (k != "host" and not re.match(r"https?://", v)):
            _bad(path, text, k, "notify", "must be a URL starting with http:// or https://"
                 if k != "host" else "must be a string")
        setattr(cfg, k, v)
    return cfg


def _merge(path: str, text: str, section: str, table: dict, defaults: tuple, kind: type,
           ) -> tuple:
    by_name = {d.name: d for d in defaults}
    fields = {f.name: f for f in dataclasses.fields(kind)}
    for name, body in table.items():
        where = f"{section}.{name}"
        if not isinstance(body, dict):
            _bad(path, text, name, section, "must be a table: [" + where + "]")
        if body.get("enabled", True) is False:
            by_name.pop(name, None)
            continue
        changes: dict[str, Any] = {}
        for k, v in body.items():
            if k == "enabled":
                continue
            f = _KEYS.get(k, k)
            if f not in fields or f == "name":
                known = sorted({_KEYS_BACK.get(x, x) for x in fields} - {"name"})
                _bad(path, text, k, where, f"unknown key (known: {', '.join(known)})")
            want = fields[f].type
            if f == "metric":
                if not isinstance(v, str) or v not in BY_NAME:
                    _bad(path, text, k, where, f"{v!r} is not a counter rsthound reads (see "
                         "'rsthound counters')")
            elif "float" in str(want):
                if isinstance(v, bool) or not isinstance(v, int | float) or not (
                        0 <= v < float("inf")):  # NaN fails this too
                    _bad(path, text, k, where, "must be a number >= 0")
            elif "int" in str(want):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    _bad(path, text, k, where, "must be a whole number >= 1")
            elif "bool" in str(want) and not isinstance(v, bool):
                _bad(path, text, k, where, "must be true or false")
            elif "str" in str(want) and not isinstance(v, str):
                _bad(path, text, k, where, "must be a string")
            changes[f] = v
        if name in by_name:
            by_name[name] = dataclasses.replace(by_name[name], **changes)
        else:
            if "metric" not in changes:
                _bad(path, text, name, section, f"a new rule needs a metric: [{where}] "
                     "metric = \"Tcp.AttemptFails\"")
            changes.setdefault("title", changes["metric"])
            by_name[name] = kind(name=name, **changes)
    return tuple(by_name.values())


def _bad(path: str, text: str, key: str, table: str | None, what: str) -> None:
    line = _line_of(text, key, table)
    where = f"line {line}: " if line else ""
    name = f"{table}.{key}" if table else key
    raise BadInput(f"{where}{name}: {what}", path)


def _line_of(text: str, key: str, table: str | None) -> int | None:
    """Where `key` is set (inside [table] when given), for the error message."""
    in_table = False
    header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+")
    for i, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            name = m.group(1).replace('"', "")
            if table is None and (name == key or name.startswith(key + ".")):
                return i
            if table is not None and name == f"{table}.{key}":
                return i
            in_table = name == table
            continue
        if in_table and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return i
    return None
