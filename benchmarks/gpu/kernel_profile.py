"""Where a worker process's GPU time goes: torch.profiler's CUDA kernel trace (CUPTI) over a
density trial's measuring window, folded by kernel name into microseconds and launches per
processed frame (the names say the stage: the capture threads' RGB->BGR copy, the letterbox's
resize, the detector's and classifier's convolutions, NMS, the crops' grid sample).

The py-spy profile (``profile_summary.py``) says where host time goes; this says which
kernels fill the SMs, the other resource near its limit at decode-included density.

In a worker process (``density.py`` calls :func:`profiled` when ``DENSITY_KERNEL_PROFILE``
names a folder) it writes ``kernels.<pid>.json``; then

    python -m benchmarks.gpu.kernel_profile FOLDER [--json SUMMARY.json]

folds every process's file into a markdown table of GPU microseconds per processed frame.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

KERNEL_PROFILE_ENV = "DENSITY_KERNEL_PROFILE"
"""A folder: each worker process traces its measuring window's kernels and writes there."""


@contextlib.contextmanager
def profiled(frames: Callable[[], int]) -> Iterator[None]:
    """Trace CUDA kernels while the block runs, when ``DENSITY_KERNEL_PROFILE`` is set;
    ``frames()`` (called after the block) gives the frames processed meanwhile."""
    folder = os.environ.get(KERNEL_PROFILE_ENV)
    if not folder:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
        yield
    folded = fold(trace.events())
    folded["frames"] = frames()
    Path(folder, f"kernels.{os.getpid()}.json").write_text(json.dumps(folded))


def fold(events: Any) -> dict[str, Any]:
    """Kernel microseconds and launches by kernel name. CUPTI traces every kernel of the
    process; the profiler records torch ops only on the thread that started it, so a
    kernel's name, not its op, says which stage it belongs to."""
    spent: dict[str, float] = {}
    launches: Counter[str] = Counter()
    for event in events:
        if not str(getattr(event, "device_type", "")).endswith("CUDA"):
            continue
        name = event.name[:100]
        spent[name] = spent.get(name, 0.0) + float(getattr(event, "self_device_time_total", 0.0))
        launches[name] += 1
    return {"kernel_us": spent, "kernel_launches": dict(launches)}


def summarise(folder: Path) -> dict[str, Any]:
    """Every process's trace pooled: GPU microseconds and launches per processed frame."""
    spent: Counter[str] = Counter()
    launches: Counter[str] = Counter()
    frames = 0
    files = sorted(folder.glob("kernels.*.json"))
    for path in files:
        part = json.loads(path.read_text())
        spent.update(part["kernel_us"])
        launches.update(part["kernel_launches"])
        frames += int(part["frames"])
    per = max(frames, 1)
    return {
        "processes": len(files),
        "frames": frames,
        "gpu_us_per_frame": round(sum(spent.values()) / per, 1),
        "launches_per_frame": round(sum(launches.values()) / per, 1),
        "kernels": {
            name: {
                "us_per_frame": round(us / per, 2),
                "launches_per_frame": round(launches[name] / per, 2),
            }
            for name, us in spent.most_common(30)
        },
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['processes']} processes, {summary['frames']} frames traced: "
        f"{summary['gpu_us_per_frame']} µs of kernel time and {summary['launches_per_frame']} "
        "kernel launches per frame (kernels of different processes overlap under MPS, so this "
        "is GPU work, not wall time).",
        "",
        "| kernel | µs per frame | launches per frame |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| `{name}` | {v['us_per_frame']} | {v['launches_per_frame']} |"
        for name, v in summary["kernels"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    summary = summarise(args.folder)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(markdown(summary), end="")


if __name__ == "__main__":
    main()
