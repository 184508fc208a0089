"""Fold the py-spy samples of ``profile_on_device.sh`` into where a worker process's host CPU
goes: cores per thread role (capture threads, a lane's inference and finishing threads, ...)
and the functions that take most samples, once over every running thread (``cpu``) and once
over the thread holding the GIL (``gil``: what one process can do at most is one core of it).

    python -m benchmarks.gpu.profile_summary PROFILE_DIR [--rate 97] [--seconds 10]

reads ``PROFILE_DIR/{cpu,gil}.<pid>.txt`` (py-spy ``record --threads -f raw``) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_THREAD = re.compile(r"^thread \(\d+\): (?P<name>[^;]*);?")
_ROLE_SUFFIX = re.compile(r"-(cam-\S+|\d+.*)$")


def role(thread_name: str) -> str:
    """``capture-cam-017`` -> ``capture``, ``finish-0-cuda:0`` -> ``finish``."""
    return _ROLE_SUFFIX.sub("", thread_name) or thread_name


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread role, frames outermost first, samples) per line of a raw py-spy file."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        match = _THREAD.match(stack)
        name = match["name"] if match else "?"
        frames = stack[match.end() :].split(";") if match else stack.split(";")
        out.append((role(name), [f for f in frames if f], int(count)))
    return out


def summarise(folder: Path, mode: str, rate: float, seconds: float) -> dict[str, Counter[str]]:
    """Samples by role, by innermost frame, and by innermost KubeVision frame, over every
    process of ``mode``; counts are in cores (samples / rate / seconds / processes)."""
    files = sorted(folder.glob(f"{mode}.*.txt"))
    roles: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for path in files:
        for thread_role, frames, count in parse(path):
            roles[thread_role] += count
            leaves[frames[-1] if frames else "(no Python frame)"] += count
            mine = [f for f in frames if "kubevision/" in f or "/worker/" in f]
            ours[mine[-1] if mine else "(outside kubevision)"] += count
    scale = 1.0 / (rate * seconds * max(len(files), 1))
    return {
        name: Counter({k: v * scale for k, v in counter.items()})
        for name, counter in (("role", roles), ("leaf", leaves), ("ours", ours))
    }


def markdown(folder: Path, rate: float, seconds: float, top: int = 12) -> str:
    lines = [f"# Worker process host time by thread and function ({folder})", ""]
    for mode in ("cpu", "gil"):
        tables = summarise(folder, mode, rate, seconds)
        what = "every running thread" if mode == "cpu" else "the thread holding the GIL"
        lines += [f"## {mode}: {what} (cores per process)", ""]
        for name, counter in tables.items():
            lines += [f"| {name} | cores |", "|---|---:|"]
            lines += [f"| `{k}` | {v:.3f} |" for k, v in counter.most_common(top)]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rate", type=float, default=97.0, help="py-spy samples per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="py-spy duration")
    args = parser.parse_args(argv)
    print(markdown(args.folder, args.rate, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
