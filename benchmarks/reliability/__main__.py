"""Run every reliability scenario at full size; write benchmarks/results/reliability.{json,md}.

``python -m benchmarks.reliability [--only NAME ...] [--small]``: ``--small`` runs the sizes
the test suite uses (a quick look), ``--only`` picks scenarios by module name. The results
file is shared by all scenarios: ``--only`` replaces the rows of the scenarios it ran and keeps
the others as they were, each row saying the size it ran at.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from benchmarks.common import machine, write_results
from benchmarks.reliability import Report

SCENARIOS: tuple[str, ...] = (
    "camera_outages",
    "slow_pipeline",
    "soak",
    "operator_crashes",
    "bad_resources",
    "sinks_down",
)
"""Module names under benchmarks.reliability, in the order the table lists them."""
OUT = Path(__file__).resolve().parents[1] / "results"
NAME = "reliability"


def _size(full: bool) -> str:
    return "full" if full else "test suite (--small)"


def _markdown(rows: list[dict[str, Any]]) -> str:
    sizes = {row["full"] for row in rows}
    size = _size(sizes.pop()) + " size" if len(sizes) == 1 else "sizes per row"
    machines = {row["machine"] for row in rows}
    hardware = machines.pop() if len(machines) == 1 else "per scenario, below"
    lines = [
        f"# Reliability under faults, bad input and time ({size})",
        "",
        f"Hardware: {hardware}. Every figure comes from the real components named in the row.",
        "",
        "| scenario | size | load held | faults injected | bad inputs tried | lost | passed "
        "| command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_size(r['full'])} | {r['load']} | {r['faults']} | "
            f"{r['bad_inputs']} | {r['lost']} | {'yes' if r['ok'] else '**no**'} | "
            f"`{r['command']}` |"
        )
    for r in rows:
        lines += ["", f"## {r['name']}", ""]
        if len({row["machine"] for row in rows}) > 1:
            lines += [f"Hardware: {r['machine']}.", ""]
        lines += ["```json", json.dumps(r["figures"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def _run(name: str, full: bool) -> Report:
    """One scenario's report; a scenario that breaks down is reported as failed, so the other
    scenarios still run and the table says what happened."""
    module: Any = importlib.import_module(f"benchmarks.reliability.{name}")
    try:
        report: Report = module.run(full=full)
    except Exception as exc:  # noqa: BLE001 - the failure is the finding: reported, not lost
        return Report(name, "see the scenario", "see the scenario", "see the scenario",
                      f"the scenario broke down: {exc!r}", ok=False)  # fmt: skip
    return report


def merge(previous: dict[str, Any] | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``previous`` (a results file) with ``rows`` replacing those of the same
    scenario, in :data:`SCENARIOS` order. Rows of a file written before rows carried their
    size and machine get the file's."""
    file_wide = {k: (previous or {}).get(k) for k in ("full", "machine")}
    by_name = {row["name"]: {**file_wide, **row} for row in (previous or {}).get("scenarios", [])}
    by_name.update({row["name"]: row for row in rows})
    order = {name: i for i, name in enumerate(SCENARIOS)}
    return sorted(by_name.values(), key=lambda row: order.get(row["name"], len(order)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="scenario module names")
    parser.add_argument("--small", action="store_true", help="the test suite's sizes")
    args = parser.parse_args(argv)
    full, hardware = not args.small, machine()
    reports = [_run(name, full=full) for name in args.only or SCENARIOS]
    ran = [{**r.as_dict(), "full": full, "machine": hardware} for r in reports]
    path = OUT / f"{NAME}.json"
    previous = json.loads(path.read_text()) if args.only and path.exists() else None
    rows = merge(previous, ran)
    machines = {row["machine"] for row in rows}
    result = {
        "machine": machines.pop() if len(machines) == 1 else "per scenario",
        "full": all(row["full"] for row in rows),
        "scenarios": rows,
    }
    write_results(OUT, NAME, result, _markdown(rows))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
