"""What a worker process's paced capture threads cost in host CPU while they wait.

py-spy counted ``Condition.wait`` (the capture thread's wait for its next packet's decode
timestamp) as 0.8-1.2 running cores per worker process in the density profiles
(``benchmarks/gpu/profile_on_device.sh``). This runs the same pattern alone: THREADS threads,
each waking 30 times a second at staggered phases through ``threading.Event.wait``, and prints
the process CPU they used. A figure near zero means py-spy's share is threads that were
woken and waiting to get a CPU on a busy host, not CPU the waiting spends.

    python -m benchmarks.gpu.pacing_wait_cost [--threads 12] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from benchmarks.common import machine

FPS = 30


def paced(stop: threading.Event, phase: float) -> None:
    """Wake at ``phase + k / FPS`` until stopped, as a paced camera's capture thread does."""
    due = time.monotonic() + phase
    while not stop.is_set():
        due += 1 / FPS
        stop.wait(max(0.0, due - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=12, help="cameras per worker process")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    stop = threading.Event()
    threads = [
        threading.Thread(target=paced, args=(stop, i / (FPS * args.threads)))
        for i in range(args.threads)
    ]
    cpu, wall = time.process_time(), time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(args.seconds)
    stop.set()
    for thread in threads:
        thread.join()
    cores = (time.process_time() - cpu) / (time.monotonic() - wall)
    print(
        json.dumps(
            {
                "host": machine(),
                "threads": args.threads,
                "wakes_per_second": args.threads * FPS,
                "cores": round(cores, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
