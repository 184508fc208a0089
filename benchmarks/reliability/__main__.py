"""Run every reliability scenario at full size; write benchmarks/results/reliability.{json,md}.

``python -m benchmarks.reliability [--only NAME ...] [--small]``: ``--small`` runs the sizes
the test suite uses (a quick look), ``--only`` picks scenarios by module name.
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
)
"""Module names under benchmarks.reliability, in the order the table lists them."""
OUT = Path(__file__).resolve().parents[1] / "results"


def _markdown(reports: list[Report], full: bool) -> str:
    size = "full size" if full else "test-suite size (--small)"
    lines = [
        f"# Reliability under faults, bad input and time ({size})",
        "",
        f"Hardware: {machine()}. Every figure comes from the real components named in the row.",
        "",
        "| scenario | load held | faults injected | bad inputs tried | lost | passed | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.name} | {r.load} | {r.faults} | {r.bad_inputs} | {r.lost} | "
            f"{'yes' if r.ok else '**no**'} | `{r.command}` |"
        )
    for r in reports:
        lines += ["", f"## {r.name}", "", "```json", json.dumps(r.figures, indent=2), "```"]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="scenario module names")
    parser.add_argument("--small", action="store_true", help="the test suite's sizes")
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    reports: list[Report] = []
    for name in names:
        reports.append(_run(name, full=not args.small))
    result = {
        "machine": machine(),
        "full": not args.small,
        "scenarios": [r.as_dict() for r in reports],
    }
    write_results(OUT, "reliability", result, _markdown(reports, full=not args.small))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
