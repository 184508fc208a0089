"""The spools behind the network sinks: order, bounds, exact drop counts, what an
acknowledgement removes, and a disk spool reopened after its process ended.

The two backends must behave the same: every generated sequence of appends, takes and
acknowledgements is run on a :class:`MemorySpool` and a :class:`SqliteSpool`, and both must
give the same answers as well as keep the invariants a sink relies on.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubevision.worker.spool import Item, Limits, MemorySpool, Record, Spool, SqliteSpool


def items(first: int, count: int, size: int = 10) -> list[Item]:
    """``count`` events numbered from ``first``, each payload ``size`` bytes (at least its
    number's digits)."""
    return [("cam", str(n).zfill(size).encode()) for n in range(first, first + count)]


def numbers(records: list[Record]) -> list[int]:
    return [int(r.payload) for r in records]


@contextmanager
def both(limits: Limits) -> Iterator[tuple[MemorySpool, SqliteSpool]]:
    with tempfile.TemporaryDirectory() as folder:
        disk = SqliteSpool(Path(folder) / "spool.sqlite", limits)
        try:
            yield MemorySpool(limits), disk
        finally:
            disk.close()


Factory = Callable[[Limits], Spool]


@pytest.fixture(params=["memory", "disk"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A spool factory of each backend: ``make(limits)``."""
    opened: list[Spool] = []

    def factory(limits: Limits) -> Spool:
        spool: Spool = (
            MemorySpool(limits)
            if request.param == "memory"
            else SqliteSpool(tmp_path / "spool.sqlite", limits)
        )
        opened.append(spool)
        return spool

    yield factory
    for spool in opened:
        spool.close()


def test_events_leave_in_append_order_and_only_acks_remove_them(make: Factory) -> None:
    spool = make(Limits(max_events=100, max_bytes=2**20))
    assert spool.append(items(0, 10)) == 0
    first = spool.take(4)
    assert numbers(first) == [0, 1, 2, 3]
    assert (spool.pending, spool.ready) == (10, 6), "taken events stay held until acknowledged"
    spool.append(items(10, 2))
    assert numbers(spool.take(100)) == [4, 5, 6, 7, 8, 9, 10, 11]
    spool.ack(first)
    assert (spool.pending, spool.ready) == (8, 0)
    spool.ack(first)  # a second acknowledgement changes nothing
    assert spool.pending == 8
    assert spool.take(10) == []


def test_a_full_spool_drops_exactly_the_oldest_untaken(make: Factory) -> None:
    spool = make(Limits(max_events=10, max_bytes=2**20))
    spool.append(items(0, 10))
    sending = spool.take(3)  # a batch in flight is never dropped
    assert spool.append(items(10, 5)) == 5
    assert spool.pending == 10
    assert numbers(spool.take(100)) == [8, 9, 10, 11, 12, 13, 14]
    spool.ack(sending)
    # 7 in flight leave room for 3: of 12 new events, their own 9 oldest go
    assert spool.append(items(20, 12)) == 9
    assert spool.pending == 10
    assert numbers(spool.take(100)) == [29, 30, 31]


def test_the_byte_bound_counts_payloads_and_an_oversized_event_is_dropped(make: Factory) -> None:
    spool = make(Limits(max_events=1000, max_bytes=100))
    assert spool.append(items(0, 10, size=10)) == 0
    assert spool.append(items(10, 1, size=30)) == 3, "30 bytes need the room of the 3 oldest"
    assert spool.append(items(11, 1, size=101)) == 1, "larger than the whole spool"
    assert numbers(spool.take(100)) == [3, 4, 5, 6, 7, 8, 9, 10]


@dataclass
class Run:
    """What one backend answered to a sequence of operations."""

    answers: list[object] = field(default_factory=list)
    appended: int = 0
    dropped: int = 0
    acked: int = 0
    taken: list[int] = field(default_factory=list)


Operation = tuple[str, int, int]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 12), st.integers(1, 40)),
        st.tuples(st.just("take"), st.integers(1, 8), st.just(0)),
        st.tuples(st.just("ack"), st.integers(0, 8), st.just(0)),
    ),
    max_size=40,
)


def play(spool: Spool, ops: list[Operation], limits: Limits) -> Run:
    run, held, number = Run(), [], 0
    for op, n, size in ops:
        if op == "append":
            dropped = spool.append(items(number, n, size))
            number += n
            run.appended, run.dropped = run.appended + n, run.dropped + dropped
            run.answers.append(dropped)
        elif op == "take":
            got = spool.take(n)
            held += got
            run.taken += numbers(got)
            run.answers.append(numbers(got))
        else:
            acked, held = held[:n], held[n:]
            spool.ack(acked)
            run.acked += len(acked)
        # conservation: each appended event is acknowledged, dropped (counted) or held
        assert run.appended == run.acked + run.dropped + spool.pending
        assert spool.pending <= limits.max_events
        assert spool.ready <= spool.pending
    rest = spool.take(limits.max_events)
    assert sum(len(r.payload) for r in [*held, *rest]) <= limits.max_bytes
    run.answers.append(numbers(rest))
    run.taken += numbers(rest)
    return run


@settings(max_examples=150, deadline=None)
@given(
    ops=operations,
    max_events=st.integers(1, 20),
    max_bytes=st.integers(40, 400),
)
def test_both_backends_agree_and_keep_order_bounds_and_counts(
    ops: list[Operation], max_events: int, max_bytes: int
) -> None:
    limits = Limits(max_events=max_events, max_bytes=max_bytes)
    with both(limits) as (memory, disk):
        in_memory, on_disk = play(memory, ops, limits), play(disk, ops, limits)
    assert in_memory.answers == on_disk.answers
    # each event is taken at most once, in the order appended
    assert in_memory.taken == sorted(set(in_memory.taken))


def test_a_reopened_disk_spool_resumes_in_order_with_what_was_in_flight_first(
    tmp_path: Path,
) -> None:
    path, limits = tmp_path / "spool.sqlite", Limits(max_events=100, max_bytes=2**20)
    spool = SqliteSpool(path, limits)
    spool.append(items(0, 10))
    spool.ack(spool.take(3))  # delivered
    spool.take(4)  # sent, never acknowledged: the process ends
    del spool  # no close: as after SIGKILL, only what was committed counts

    again = SqliteSpool(path, limits)
    try:
        assert again.pending == 7
        assert numbers(again.take(100)) == [3, 4, 5, 6, 7, 8, 9]
        again.append(items(10, 1))
        (newest,) = again.take(1)
        assert int(newest.payload) == 10
        assert newest.seq > 10, "sequence numbers never go back, even after deletes"
    finally:
        again.close()


def test_a_disk_spool_keeps_its_events_when_emptied_and_reopened(tmp_path: Path) -> None:
    path, limits = tmp_path / "spool.sqlite", Limits(max_events=100, max_bytes=2**20)
    spool = SqliteSpool(path, limits)
    spool.append(items(0, 2))
    spool.ack(spool.take(2))
    assert spool.close() == 0, "a disk spool loses nothing by closing"
    again = SqliteSpool(path, limits)
    try:
        again.append(items(2, 1))
        assert numbers(again.take(5)) == [2]
    finally:
        again.close()


def test_a_memory_spool_says_how_many_events_closing_loses() -> None:
    spool = MemorySpool(Limits(max_events=100, max_bytes=2**20))
    spool.append(items(0, 5))
    spool.take(2)
    assert spool.close() == 5
    assert spool.pending == 0


def test_an_unreadable_spool_file_is_moved_aside_and_a_fresh_one_started(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"not a database" * 100)
    spool = SqliteSpool(path, Limits(max_events=10, max_bytes=2**20))
    try:
        spool.append(items(0, 1))
        assert spool.pending == 1
    finally:
        spool.close()
    (aside,) = tmp_path.glob("spool.sqlite.unreadable-*")
    assert aside.read_bytes().startswith(b"not a database")


def test_a_disk_spool_of_another_schema_version_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    SqliteSpool(path, Limits(max_events=10, max_bytes=2**20)).close()
    assert list(tmp_path.glob("spool.sqlite.unreadable-*"))


def test_a_disk_spool_stays_near_its_byte_bound_on_disk(tmp_path: Path) -> None:
    """The files hold the payloads plus SQLite's pages and a WAL of at most a few MiB: the
    footprint follows the bound, not the number of events that went through the spool."""
    limits = Limits(max_events=100_000, max_bytes=4 * 2**20)
    spool = SqliteSpool(tmp_path / "spool.sqlite", limits)
    try:
        for i in range(120):  # 12 MiB of 400-byte events through a 4 MiB spool
            spool.append(items(i * 256, 256, size=400))
        assert spool.pending == limits.max_bytes // 400
        footprint = sum(f.stat().st_size for f in tmp_path.iterdir())
    finally:
        spool.close()
    assert footprint < 1.5 * limits.max_bytes + 5 * 2**20, f"{footprint / 2**20:.1f} MiB"


@pytest.mark.parametrize(("events", "size"), [(0, 1), (1, 0), (-1, 5)])
def test_limits_must_be_positive(events: int, size: int) -> None:
    with pytest.raises(ValueError, match="spool limits must be positive"):
        Limits(max_events=events, max_bytes=size)
