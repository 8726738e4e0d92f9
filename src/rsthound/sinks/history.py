"""The history of counter increases and alerts, in one SQLite file.

Each watched interval becomes a row: `tier`, `t` its start (Unix ms), `covered` the
milliseconds it covers, and one column per counter of `metrics` with how much it grew (NULL
where the kernel lacks the counter). A rate is `n / covered`; an interval nobody watched is
simply missing. SQLite stores a 0 in no bytes, so a quiet row is small.

Three tiers keep a year small: tier 0 every interval for an hour, tier 1 one row per minute
for 8 days, tier 2 one row per hour for 400 days. Each interval row is rolled up exactly once:
rows with `t` before `rolled1` are already in tier 1, tier-1 rows before `rolled2` in tier 2.
Those marks only move forward, and rows never start before the end of the previous one, so
a row can neither be missed nor counted twice, even after a crash.

Every interval is one transaction in WAL mode, so `kill -9` loses at most the interval being
written. The last counter values are kept too: a restart in the same boot and network
namespace records the increase over the time nobody watched as one long row.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from rsthound.analyze.alerts import Event
from rsthound.analyze.rates import increases
from rsthound.errors import BadInput, NeedPrivilege
from rsthound.metrics import BY_NAME
from rsthound.model import Listener, Point, Tick
from rsthound.textforms import seconds

SCHEMA_VERSION = 1
TIERS = (  # (width of a row in ms, or 0 for "one interval"; how long rows are kept, ms)
    (0, 3600_000),
    (60_000, 8 * 86400_000),
    (3600_000, 400 * 86400_000),
)
ALERTS_KEPT_MS = 400 * 86400_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    tier INTEGER NOT NULL, t INTEGER NOT NULL, covered INTEGER NOT NULL,
    PRIMARY KEY (tier, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    t INTEGER NOT NULL, event TEXT NOT NULL, rule TEXT NOT NULL, level TEXT NOT NULL,
    metric TEXT NOT NULL, rate REAL NOT NULL, started INTEGER NOT NULL, obj TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_t ON alerts (t);
CREATE TABLE IF NOT EXISTS listeners (
    port INTEGER NOT NULL, addr TEXT NOT NULL, inode INTEGER NOT NULL,
    started INTEGER NOT NULL, stopped INTEGER, process TEXT,
    seen_start INTEGER NOT NULL);  -- 0: already listening when watch first looked
CREATE INDEX IF NOT EXISTS listeners_port ON listeners (port, started);
"""


def default_path(netns: str | None = None) -> str:
    """systemd's $STATE_DIRECTORY (StateDirectory=), else /var/lib/rsthound as root, else the
    XDG state directory; one file per namespace."""
    if os.environ.get("STATE_DIRECTORY"):
        base = os.environ["STATE_DIRECTORY"].split(":")[0]
    elif os.geteuid() == 0:
        base = "/var/lib/rsthound"
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        base = os.path.join(state, "rsthound")
    name = "history.db"
    if netns:
        name = "history-netns-" + "".join(c if c.isalnum() or c in "-_." else "_"
                                          for c in netns) + ".db"
    return os.path.join(base, name)


class History:
    """One history file, opened for writing (`watch`) or reading (`history`)."""

    def __init__(self, path: str, write: bool = False) -> None:
        self.path = path
        self._lock_fd: int | None = None
        if write:
            parent = os.path.dirname(path) or "."
            try:
                os.makedirs(parent, mode=0o750, exist_ok=True)
            except OSError as e:
                raise BadInput(f"cannot create its folder: {e.strerror}", path) from None
            # said plainly: SQLite would only say "unable to open database file"
            if os.statvfs(parent).f_flag & os.ST_RDONLY:
                raise BadInput("its folder is on a read-only file system", path)
        else:
            if os.path.isdir(path):
                raise BadInput("a directory, not a history file (give the file, as --db "
                               "DIR/history.db)", path)
            try:
                os.stat(path)
            except FileNotFoundError:
                raise BadInput("no history here yet: 'rsthound watch' writes it (or give "
                               "--db)", path) from None
            except PermissionError:
                raise NeedPrivilege(f"{path}: permission denied; run as root, or as the "
                                    "user that runs 'rsthound watch'") from None
        try:
            uri = f"file:{path}" + ("" if write else "?mode=ro")
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
            self.db.execute("PRAGMA busy_timeout = 5000")
            if write:
                self._lock()
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(_SCHEMA)
                self._check_version()
            self._meta = dict(self.db.execute("SELECT key, value FROM meta"))
            self.columns = [r[1] for r in self.db.execute("PRAGMA table_info(points)")][3:]
            if write:
                for name in BY_NAME:
                    if name not in self.columns:
                        self.db.execute(f"ALTER TABLE points ADD COLUMN {_q(name)} INTEGER")
                        self.columns.append(name)
                self._prepare()
        except sqlite3.Error as e:
            self.close()
            raise BadInput(f"not a usable history file: {e}", path) from None
        except OSError as e:
            self.close()
            raise BadInput(f"cannot open it: {e.strerror}", path) from None
        self.rolled = [0, int(self._meta.get("rolled1", 0)), int(self._meta.get("rolled2", 0))]
        self.end_ms = int(self._meta.get("end", 0))

    def _prepare(self) -> None:
        """The statements that add rows: into a row with the same key, amounts add up."""
        cols = ", ".join(_q(c) for c in self.columns)
        merge = ", ".join(f"{c} = coalesce({c} + excluded.{c}, {c}, excluded.{c})"
                          for c in map(_q, ["covered", *self.columns]))
        self._insert = (f"INSERT INTO points (tier, t, covered, {cols}) VALUES "
                        f"({', '.join('?' * (len(self.columns) + 3))}) "
                        f"ON CONFLICT DO UPDATE SET {merge}")
        sums = ", ".join(f"sum({_q(c)})" for c in self.columns)
        self._rollup = (f"INSERT INTO points (tier, t, covered, {cols}) SELECT ?, t - t % ?, "
                        f"sum(covered), {sums} FROM points WHERE tier = ? AND t >= ? AND t < ? "
                        f"GROUP BY 2 ON CONFLICT DO UPDATE SET {merge}")

    def _lock(self) -> None:
        """One writer per file: a second `watch` on it would interleave rows."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput("another 'rsthound watch' is writing this history (give this one "
                           "its own --db)", self.path) from None
        self._lock_fd = fd

    @property
    def label(self) -> str:
        """What was watched: "this host", "netns blue"."""
        return self._meta.get("label", "")

    @label.setter
    def label(self, text: str) -> None:
        if text != self.label:
            self._set("label", text)

    def _check_version(self) -> None:
        got = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if got is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(got[0]) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer rsthound (schema {got[0]})")

    def close(self) -> None:
        if getattr(self, "db", None) is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def resume(self, source: str, wall: float, values: dict[str, int]) -> float | None:
        """The first sample of a run. If the last run watched the same `source` (a boot and
        namespace identity) and ended before `wall`, store what grew since then as one row and
        return when that was; else None."""
        last = json.loads(self._meta.get("last", "null"))
        if not last or last.get("source") != source or not source or last["wall"] >= wall:
            self._save_last(source, wall, values)
            return None
        incs = increases(last["values"], values)
        self.add(source, last["wall"], wall, values, incs)
        return float(last["wall"])

    def add(self, source: str, start: float, end: float, values: dict[str, int],
            increases: dict[str, int]) -> None:
        """Store one interval [start, end) (wall seconds), its counters' increases and the
        values at its end, in one transaction. After an error, open the file again."""
        t = max(round(start * 1000), self.end_ms)  # a clock stepped back: keep rows in order
        covered = max(0, round(end * 1000) - round(start * 1000))
        row = (0, t, covered, *(increases.get(c) for c in self.columns))
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(self._insert, row)
            self.end_ms = max(self.end_ms, t + covered)
            self._set("end", str(self.end_ms))
            self._save_last(source, end, values)
            self._roll(t)
            db.execute("COMMIT")
        except BaseException:  # nothing of it is stored; the caller drops this object
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def add_event(self, e: Event, obj: dict[str, object]) -> None:
        """Store an alert or clear event, with its JSON object as `watch --json` prints it."""
        self.db.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (round(e.ts * 1000), e.event, e.rule, e.level, e.metric, e.rate,
                         round(e.started * 1000), json.dumps(obj, separators=(",", ":"))))

    def open_listeners(self) -> dict[int, int]:
        """Listeners not yet seen stopping: socket inode -> row."""
        return dict(self.db.execute(
            "SELECT inode, rowid FROM listeners WHERE stopped IS NULL"))

    def listener_started(self, wall: float, x: Listener, seen_start: bool = True) -> int:
        obj = json.dumps(x.process.obj(), separators=(",", ":")) if x.process else None
        cur = self.db.execute("INSERT INTO listeners VALUES (?, ?, ?, ?, NULL, ?, ?)",
                              (x.port, x.addr, x.inode, round(wall * 1000), obj,
                               int(seen_start)))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def listener_stopped(self, wall_ms: int, row: int) -> None:
        self.db.execute("UPDATE listeners SET stopped = ? WHERE rowid = ?", (wall_ms, row))

    def served(self, port: int) -> list[dict[str, Any]]:
        """Who listened on `port`, newest first: addr, started (or first seen, when not
        `seen_start`), stopped (None: still, as far as the last run knew), process."""
        rows = self.db.execute("SELECT addr, started, stopped, process, seen_start FROM "
                               "listeners WHERE port = ? ORDER BY started DESC, rowid DESC",
                               (port,))
        return [{"addr": a, "started": t0 / 1000, "stopped": None if t1 is None else t1 / 1000,
                 "process": json.loads(p) if p else None, "seen_start": bool(seen)}
                for a, t0, t1, p, seen in rows]

    def recent_listeners(self, limit: int = 20) -> list[dict[str, Any]]:
        """The listeners that started or stopped last, newest first, with their port."""
        rows = self.db.execute(
            "SELECT port, addr, started, stopped, process, seen_start FROM listeners "
            "ORDER BY max(started, coalesce(stopped, 0)) DESC, rowid DESC LIMIT ?", (limit,))
        return [{"port": port, "addr": a, "started": t0 / 1000,
                 "stopped": None if t1 is None else t1 / 1000,
                 "process": json.loads(p) if p else None, "seen_start": bool(seen)}
                for port, a, t0, t1, p, seen in rows]

    def _save_last(self, source: str, wall: float, values: dict[str, int]) -> None:
        self._set("last", json.dumps({"source": source, "wall": wall, "values": values},
                                     separators=(",", ":")))

    def _set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self._meta[key] = value

    def _roll(self, now_ms: int) -> None:
        """Roll finished minutes into tier 1 and finished hours into tier 2; drop old rows."""
        db = self.db
        rolled = False
        for tier in (1, 2):
            width = TIERS[tier][0]
            cut = now_ms - now_ms % width
            if cut <= self.rolled[tier]:
                break
            db.execute(self._rollup, (tier, width, tier - 1, self.rolled[tier], cut))
            self.rolled[tier] = cut
            self._set(f"rolled{tier}", str(cut))
            rolled = True
        if rolled:  # rows not yet rolled up are kept, however old
            for tier, (_, keep) in enumerate(TIERS):
                limit = now_ms - keep if tier == 2 else min(now_ms - keep, self.rolled[tier + 1])
                db.execute("DELETE FROM points WHERE tier = ? AND t < ?", (tier, limit))
            db.execute("DELETE FROM alerts WHERE t < ?", (now_ms - ALERTS_KEPT_MS,))
            db.execute("DELETE FROM listeners WHERE stopped < ?", (now_ms - ALERTS_KEPT_MS,))

    # -- reading ---------------------------------------------------------------------------

    def series(self, metric: str, since_ms: int, until_ms: int) -> list[Point]:
        """The finest rows there are for [since, until), oldest first, without overlaps.

        Tier 0 serves from b1 on, tier 1 from b2 to b1, tier 2 before b2: each boundary lies
        on the coarser tier's row edges, where that tier is complete, and where the finer
        tier has all its rows from then on.
        """
        b1 = self._edge(0, self.rolled[1])
        b2 = min(self._edge(1, self.rolled[2]), b1 - b1 % TIERS[2][0])
        column = _q(metric) if metric in self.columns else "NULL"
        out: list[Point] = []
        for tier, lower, upper in ((2, since_ms, b2), (1, b2, b1), (0, b1, until_ms)):
            lower, upper = max(lower, since_ms), min(upper, until_ms)
            if lower < upper:
                out += [Point(*row, TIERS[tier][0]) for row in self.db.execute(
                    f"SELECT t, covered, {column} FROM points WHERE tier = ? AND t >= ? "
                    f"AND t < ? AND {column} IS NOT NULL ORDER BY t", (tier, lower, upper))]
        return out

    def active_since(self, metric: str, until_ms: int, lookback_ms: int = 8 * 86_400_000,
                     ) -> float | None:
        """When the counter's current run of growth began (Unix seconds): the start of the
        first row of the unbroken run of growing rows that ends at `until`; None when the
        counter was not growing then."""
        points = self.series(metric, until_ms - lookback_ms, until_ms)
        if not points or points[-1].n <= 0:
            return None
        last = points[-1]
        if until_ms - (last.t_ms + last.span_ms) > max(2 * last.span_ms, 5000):
            return None  # the history stops before `until`: it cannot say
        start = last.t_ms
        for p in reversed(points[:-1]):
            if p.n <= 0 or p.t_ms + p.span_ms < start - p.span_ms:
                break  # quiet, or nobody watched
            start = p.t_ms
        return start / 1000

    def _edge(self, tier: int, rolled: int) -> int:
        """Where `tier` takes over from the next coarser one: at the start of the coarser row
        its first row falls in, if it holds all that coarser row holds; else one row later."""
        width = TIERS[tier + 1][0]
        first = self.db.execute("SELECT min(t) FROM points WHERE tier = ?",
                                (tier,)).fetchone()[0]
        if first is None:
            return rolled
        edge = first - first % width
        fine, coarse = self.db.execute(
            "SELECT sum(covered * (tier = ?)), sum(covered * (tier = ?)) FROM points "
            "WHERE tier IN (?, ?) AND t >= ? AND t < ?",
            (tier, tier + 1, tier, tier + 1, edge, edge + width)).fetchone()
        if (coarse or 0) > (fine or 0):
            edge += width
        return min(rolled, edge)

    def events(self, since_ms: int, until_ms: int) -> list[dict[str, object]]:
        """Alert and clear events in [since, until), after the alerts still open at `since`."""
        open_at_since: dict[str, dict[str, object]] = {}
        out: list[dict[str, object]] = []
        for t, event, rule, obj in self.db.execute(
                "SELECT t, event, rule, obj FROM alerts WHERE t < ? ORDER BY t", (until_ms,)):
            if t >= since_ms:
                out.append(json.loads(obj))
            elif event == "alert":
                open_at_since[rule] = json.loads(obj)
            elif event == "clear":
                open_at_since.pop(rule, None)
        return list(open_at_since.values()) + out


def _q(name: str) -> str:
    """A column name, quoted for SQL ("Tcp.AttemptFails" has a dot)."""
    return '"' + name.replace('"', '""') + '"'


class Recorder:
    """`watch`'s link to its history. A failing store never stops the alerts: it says so
    once, drops the store, and tries it again every `retry` seconds."""

    def __init__(self, path: str, source: str, label: str, say: Callable[[str], None],
                 retry: float = 60.0) -> None:
        self.path, self.source, self.label, self.say = path, source, label, say
        self.retry = retry
        self.store: History | None = None
        self._prev: float | None = None  # the last stored tick's wall time
        self._next_try = 0.0
        self._failed = False
        self._listening: dict[int, int] | None = None  # inode -> row, while open
        self._last_end = 0  # where the previous run's history ended (ms)

    def sample(self, tick: Tick) -> None:
        """Store the interval since the previous tick (the counters of `metrics` only)."""
        mono, wall = tick.mono, tick.wall
        values = {k: v for k, v in tick.values.items() if k in BY_NAME}
        if self.store is None and mono >= self._next_try:
            self._open(mono)
        if self.store is not None:
            try:
                if self._prev is None:
                    since = self.store.resume(self.source, wall, values)
                    if since is not None:
                        self.say(f"history: {self.path}: filled in the {seconds(wall - since)} "
                                 "since the last run from the counters")
                else:
                    incs = {k: v for k, v in (tick.increases or {}).items() if k in BY_NAME}
                    self.store.add(self.source, self._prev, wall, values, incs)
            except (sqlite3.Error, OSError) as e:
                self._fail(mono, str(e))
        self._prev = None if self.store is None else wall

    def listeners(self, mono: float, wall: float, now: list[Listener]) -> None:
        """Record which listeners started and stopped since the last look; `now` comes
        with owners named (sockdiag.OwnerCache)."""
        if self.store is None:
            return
        try:
            first_look = self._listening is None
            if self._listening is None:  # first look: close what the last run left open
                self._listening = self.store.open_listeners()
                alive = {x.inode for x in now}
                for inode, row in list(self._listening.items()):
                    if inode not in alive:  # stopped while nobody watched: by then at most
                        self.store.listener_stopped(self._last_end, row)
                        del self._listening[inode]
            current = {x.inode: x for x in now}
            new = [x for i, x in current.items() if i not in self._listening]
            for x in new:
                self._listening[x.inode] = self.store.listener_started(wall, x, not first_look)
            for inode in [i for i in self._listening if i not in current]:
                self.store.listener_stopped(round(wall * 1000), self._listening.pop(inode))
        except (sqlite3.Error, OSError) as e:
            self._fail(mono, str(e))

    def event(self, mono: float, e: Event, obj: dict[str, object]) -> None:
        if self.store is not None:
            try:
                self.store.add_event(e, obj)
            except (sqlite3.Error, OSError) as err:
                self._fail(mono, str(err))

    def _open(self, mono: float) -> None:
        try:
            self.store = History(self.path, write=True)
            self.store.label = self.label
            self._last_end = self.store.end_ms
            self._listening = None
        except (BadInput, sqlite3.Error) as e:
            self._fail(mono, e.reason if isinstance(e, BadInput) else str(e))
            return
        if self._failed:
            self.say(f"history: writing {self.path} again")
        self._failed = False

    def _fail(self, mono: float, why: str) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        self._next_try = mono + self.retry
        if not self._failed:
            self.say(f"history: cannot write {self.path}: {why}; alerts go on without "
                     f"history, trying again every {self.retry:g} s")
        self._failed = True

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
