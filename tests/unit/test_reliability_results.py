"""``python -m benchmarks.reliability --only NAME`` updates its rows of the shared results file
and keeps the other scenarios' rows."""

from __future__ import annotations

from typing import Any

from benchmarks.reliability.__main__ import _markdown, merge


def row(name: str, full: bool, lost: str = "nothing", machine: str = "box") -> dict[str, Any]:
    return {
        "name": name,
        "full": full,
        "machine": machine,
        "load": "l",
        "faults": "f",
        "bad_inputs": "none",
        "lost": lost,
        "ok": True,
        "figures": {},
        "command": f"python -m benchmarks.reliability --only {name}",
    }


def test_only_replaces_its_rows_and_keeps_the_others_in_table_order() -> None:
    previous = {
        "full": False,
        "machine": "old box",
        "scenarios": [
            {k: v for k, v in row("soak", False).items() if k not in ("full", "machine")},
            row("camera_outages", False),
            row("sinks_down", False, lost="old"),
        ],
    }
    rows = merge(previous, [row("sinks_down", True, lost="new")])
    assert [r["name"] for r in rows] == ["camera_outages", "soak", "sinks_down"]
    assert [r["full"] for r in rows] == [False, False, True], "an old row gets its file's size"
    assert rows[1]["machine"] == "old box", "... and its machine"
    assert rows[-1]["lost"] == "new"


def test_a_run_without_a_previous_file_writes_only_its_rows() -> None:
    assert merge(None, [row("soak", True)]) == [row("soak", True)]


def test_the_table_names_each_rows_size_and_machine() -> None:
    mixed = _markdown([row("soak", False, machine="old box"), row("sinks_down", True)])
    assert "(sizes per row)" in mixed
    assert "| soak | test suite (--small) |" in mixed
    assert "| sinks_down | full |" in mixed
    assert "Hardware: per scenario, below." in mixed
    assert "Hardware: old box." in mixed
    assert "Hardware: box." in mixed
    same = _markdown([row("soak", True)])
    assert "(full size)" in same
    assert "Hardware: box." in same
