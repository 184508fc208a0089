"""Bounded, ordered stores of the events a network sink has not delivered yet.

A webhook or MQTT sink appends every event it is given, its sender takes the oldest ones, and
deletes them only once the destination acknowledged them (a 2xx answer, a PUBACK) or refused
them for good. While a destination is down the spool fills up to its bounds (a number of
events and their bytes); beyond them the oldest events nobody is sending yet make room, and
:meth:`Spool.append` says exactly how many. Events being sent ("taken") are never dropped, so
an event that arrives is never also counted as dropped.

Two backends behind one interface:

* :class:`MemorySpool`: a deque, as fast as today's queue; what it holds is lost when the
  process ends (:meth:`close` says how much: a crash cannot).
* :class:`SqliteSpool`: one SQLite file per sink (stdlib ``sqlite3``, WAL journal), committed
  before :meth:`append` returns, so a killed worker restarted on the same file resumes in
  order. ``synchronous=NORMAL``: a process crash loses nothing committed; a power cut may lose
  the last commits since the WAL was synced.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("kubevision.worker.spool")

SCHEMA_VERSION = 1
Item = tuple[str, bytes]
"""What a sink appends: the event's camera (MQTT topics are per camera) and its JSON."""


class SpoolError(RuntimeError):
    """The spool could not store events (disk full, I/O error) or could not be opened."""


@dataclass(frozen=True)
class Record:
    """One spooled event; ``seq`` grows with every append, across restarts of a disk spool."""

    seq: int
    camera: str
    payload: bytes


@dataclass(frozen=True)
class Limits:
    """Most events and most payload bytes a spool holds (taken ones included)."""

    max_events: int
    max_bytes: int

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_bytes < 1:
            raise ValueError(
                f"spool limits must be positive, got maxEvents={self.max_events} "
                f"maxBytes={self.max_bytes}"
            )


class Spool(Protocol):
    """The store a sink's publisher appends to and its sender takes from."""

    limits: Limits

    @property
    def pending(self) -> int:
        """Events held: not yet acknowledged (taken or not)."""
        ...

    @property
    def ready(self) -> int:
        """Events held and not taken: what the sender has still to send."""
        ...

    def append(self, items: Sequence[Item]) -> int:
        """Store ``items`` after everything held; returns how many events were dropped to stay
        within the limits (the oldest not taken; of ``items`` too, if they alone do not fit)."""
        ...

    def take(self, limit: int) -> list[Record]:
        """The oldest events not taken yet, at most ``limit``, in append order; they stay
        held (and are never dropped) until acknowledged."""
        ...

    def ack(self, records: Iterable[Record]) -> None:
        """Forget taken events: delivered, or refused for good."""
        ...

    def close(self) -> int:
        """Release the backing store; returns how many held events are lost by closing."""
        ...


def _plan(
    limits: Limits, held: tuple[int, int], taken: tuple[int, int], sizes: Sequence[int]
) -> tuple[int, int, int]:
    """How to append events of ``sizes`` bytes to a spool holding ``held`` (events, bytes) of
    which ``taken`` are being sent: (new events skipped, their bytes, bytes to evict).

    New events that cannot fit even with every untaken event gone are skipped, oldest first;
    then the oldest untaken events must free ``bytes to evict`` and as many slots as the
    caller computes from the count.
    """
    room_events = limits.max_events - taken[0]
    room_bytes = limits.max_bytes - taken[1]
    skip, skip_bytes = 0, 0
    total = sum(sizes)
    while skip < len(sizes) and (
        len(sizes) - skip > room_events or total - skip_bytes > room_bytes
    ):
        skip_bytes += sizes[skip]
        skip += 1
    over_bytes = max(0, held[1] + total - skip_bytes - limits.max_bytes)
    return skip, skip_bytes, over_bytes


class MemorySpool:
    """A bounded in-memory spool: fast, and lost with the process."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._queue: collections.deque[Record] = collections.deque()
        self._taken: dict[int, Record] = {}
        self._bytes = 0
        self._taken_bytes = 0
        self._seq = 0

    def __repr__(self) -> str:
        return f"MemorySpool(max_events={self.limits.max_events})"

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._taken)

    @property
    def ready(self) -> int:
        with self._lock:
            return len(self._queue)

    def append(self, items: Sequence[Item]) -> int:
        sizes = [len(payload) for _, payload in items]
        with self._lock:
            held = (len(self._queue) + len(self._taken), self._bytes)
            skip, skip_bytes, over_bytes = _plan(
                self.limits, held, (len(self._taken), self._taken_bytes), sizes
            )
            over_events = max(0, held[0] + len(items) - skip - self.limits.max_events)
            dropped = skip
            while self._queue and (over_events > 0 or over_bytes > 0):
                old = self._queue.popleft()
                self._bytes -= len(old.payload)
                over_events -= 1
                over_bytes -= len(old.payload)
                dropped += 1
            for camera, payload in items[skip:]:
                self._seq += 1
                self._queue.append(Record(self._seq, camera, payload))
            self._bytes += sum(sizes) - skip_bytes
            return dropped

    def take(self, limit: int) -> list[Record]:
        with self._lock:
            out = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
            for record in out:
                self._taken[record.seq] = record
                self._taken_bytes += len(record.payload)
            return out

    def ack(self, records: Iterable[Record]) -> None:
        with self._lock:
            for record in records:
                if self._taken.pop(record.seq, None) is not None:
                    self._bytes -= len(record.payload)
                    self._taken_bytes -= len(record.payload)

    def close(self) -> int:
        with self._lock:
            lost = len(self._queue) + len(self._taken)
            self._queue.clear()
            self._taken.clear()
            self._bytes = self._taken_bytes = 0
            return lost


class SqliteSpool:
    """A bounded spool in one SQLite file that outlives the process.

    Rows are ``(seq, camera, payload)`` with ``seq`` an AUTOINCREMENT key: it never goes back,
    even when the table empties, so "after the last one taken" stays well defined. Counts and
    sizes are kept in memory (read once at open) so the bounds cost no query.
    """

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        self._lock = threading.Lock()
        self._taken: dict[int, int] = {}  # seq -> payload bytes
        self._acked: set[int] = set()  # taken, acknowledged, not deleted yet (a failed delete)
        self._taken_through = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = _open(path)
        except OSError as exc:
            raise SpoolError(f"cannot create spool {path}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {path}: {exc}") from exc
        row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM events")
        self._count, self._bytes = row.fetchone()
        if self._count:
            log.info(
                "spool resumed with %d events: path=%s",
                self._count,
                path,
                extra={"spool": str(path), "pending": self._count},
            )

    def __repr__(self) -> str:
        return f"SqliteSpool(path={str(self.path)!r}, max_events={self.limits.max_events})"

    @property
    def pending(self) -> int:
        with self._lock:
            return int(self._count)

    @property
    def ready(self) -> int:
        with self._lock:
            return int(self._count) - len(self._taken)

    def append(self, items: Sequence[Item]) -> int:
        sizes = [len(payload) for _, payload in items]
        with self._lock:
            taken = (len(self._taken), sum(self._taken.values()))
            skip, skip_bytes, over_bytes = _plan(
                self.limits, (self._count, self._bytes), taken, sizes
            )
            over_events = max(0, self._count + len(items) - skip - self.limits.max_events)
            with self._transaction() as db:
                evicted, evicted_bytes = self._evict(db, over_events, over_bytes)
                db.executemany("INSERT INTO events (camera, payload) VALUES (?, ?)", items[skip:])
            # only once committed: a failed commit (disk full) must leave the counts true
            self._count += len(items) - skip - evicted
            self._bytes += sum(sizes) - skip_bytes - evicted_bytes
            return skip + evicted

    def _evict(self, db: sqlite3.Connection, events: int, size: int) -> tuple[int, int]:
        """Delete the oldest untaken events until ``events`` of them and ``size`` bytes are
        gone (in the caller's transaction); returns (events, bytes) deleted."""
        if events <= 0 and size <= 0:
            return 0, 0
        evicted, evicted_bytes, last = 0, 0, 0
        query = "SELECT seq, length(payload) FROM events WHERE seq > ? ORDER BY seq"
        # closed when done: an unfinished statement holds a read lock that keeps checkpoints
        # from recycling the WAL, which then grows without bound
        with contextlib.closing(db.execute(query, (self._taken_through,))) as rows:
            for seq, length in rows:
                if evicted >= events and evicted_bytes >= size:
                    break
                evicted, evicted_bytes, last = evicted + 1, evicted_bytes + length, seq
        db.execute("DELETE FROM events WHERE seq > ? AND seq <= ?", (self._taken_through, last))
        return evicted, evicted_bytes

    def take(self, limit: int) -> list[Record]:
        with self._lock:
            if self._db is None:
                return []
            try:
                rows = self._db.execute(
                    "SELECT seq, camera, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (self._taken_through, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: {exc}") from exc
            out = [Record(seq, camera, bytes(payload)) for seq, camera, payload in rows]
            for record in out:
                self._taken[record.seq] = len(record.payload)
            if out:
                self._taken_through = out[-1].seq
            return out

    def ack(self, records: Iterable[Record]) -> None:
        """Delete acknowledged events; those a failed delete (disk full) left are deleted with
        the next acknowledgement, so a disk that recovers sends nothing twice."""
        with self._lock:
            self._acked.update(r.seq for r in records if r.seq in self._taken)
            if not self._acked or self._db is None:
                return  # closed: the events stay on disk and are sent again after a restart
            with self._transaction() as db:
                db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in self._acked])
            for seq in self._acked:
                self._bytes -= self._taken.pop(seq)
            self._count -= len(self._acked)
            self._acked.clear()

    def close(self) -> int:
        """Nothing is lost: the events stay in the file for the next start."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._taken.clear()
            self._acked.clear()
            return 0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (rolled back on error); errors become SpoolError."""
        if self._db is None:
            raise SpoolError(f"spool {self.path} is closed")
        try:
            with self._db:
                yield self._db
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc


def _open(path: Path) -> sqlite3.Connection:
    """The spool database at ``path``, created if missing. A file that is not a spool of this
    version (corrupt, or written by another program) is moved aside, not deleted, and a fresh
    one started: a worker must not crash-loop on a damaged file."""
    try:
        return _connect(path)
    except sqlite3.OperationalError:
        raise  # cannot open or write (permissions, disk): the caller says so and fails
    except (sqlite3.DatabaseError, _Incompatible) as exc:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        path.replace(aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        log.error(
            "spool file unreadable, moved aside; its events are lost: path=%s moved_to=%s error=%s",
            path,
            aside,
            exc,
            extra={"spool": str(path), "moved_to": str(aside)},
        )
        return _connect(path)


class _Incompatible(Exception):
    """A SQLite file that is not a spool of this version."""


def _connect(path: Path) -> sqlite3.Connection:
    # autocommit off with explicit transactions (``with db``); one connection shared by the
    # sink's threads under the spool's lock
    db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # the WAL shrinks back to this after a checkpoint instead of keeping its largest size
        db.execute(f"PRAGMA journal_size_limit={4 * 2**20}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise _Incompatible(f"spool schema version {version}, not {SCHEMA_VERSION}")
        with db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "camera TEXT NOT NULL, payload BLOB NOT NULL)"
            )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("SELECT count(*) FROM events").fetchone()
    except BaseException:
        db.close()
        raise
    return db
