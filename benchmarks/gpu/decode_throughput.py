"""Benchmark: aggregate decode throughput of N concurrent 1080p H.264 streams, CPU vs NVDEC.

Every stream is a worker camera (:class:`~kubevision.worker.capture.CameraStream`, one capture
thread each, the worker's own way) reading the same clip unpaced and looping, with a one-frame
latest-frame buffer nobody drains. Counted: frames delivered to those buffers during a fixed
window that starts once every stream has delivered its first frame and a warm-up has passed.

* **cpu**: PyAV/FFmpeg (``thread_type="AUTO"``: frame + slice threads per stream), then swscale
  to a BGR frame in CPU memory.
* **nvdec**: PyAV demuxing, NVDEC decoding on GPU ``--gpu`` (one decoder per stream), NV12 to
  BGR in torch, synchronised: a BGR frame in GPU memory, never copied to the host.

For each N it reports frames/s, per-stream frames/s and real-time factor against the clip's
frame rate (mean and slowest stream), the process's CPU use, and the NVDEC/CPU ratio. Where
NVDEC cannot run, each NVDEC point records why instead of a figure.

    bash benchmarks/gpu/make_clip.sh /tmp/mot17_1080p30_h264.mp4
    python -m benchmarks.gpu.decode_throughput --clip /tmp/mot17_1080p30_h264.mp4 \\
        [--streams 1,4,16,32,64] [--seconds 8] [--budget-s 170] [--out benchmarks/results]

writes ``gpu_decode.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av

from benchmarks.common import machine, write_results
from kubevision.api.camera import Sampling
from kubevision.api.worker_config import CameraAssignment
from kubevision.worker.capture import CameraStream, CaptureOptions, StreamState
from kubevision.worker.metrics import WorkerMetrics
from kubevision.worker.nvdec import DecoderName, nvdec_unavailable_reason

log = logging.getLogger("benchmarks.gpu.decode_throughput")

RESULTS = Path(__file__).resolve().parents[1] / "results"
NAME = "gpu_decode"
STREAMS = (1, 4, 16, 32, 64)
DECODERS: tuple[DecoderName, ...] = ("cpu", "nvdec")
SETUP_TIMEOUT_S = 60.0
"""Longest wait for every stream's first frame (opening N decoders)."""
TEARDOWN_ALLOWANCE_S = 5.0
TIMED = {
    "cpu": "PyAV/FFmpeg decode (thread_type AUTO) + swscale to a BGR frame in CPU memory, "
    "one capture thread per stream",
    "nvdec": "PyAV demux + NVDEC decode + NV12->BGR in torch to a BGR frame in GPU memory "
    "(stream synchronised, no host copy), one capture thread and one NVDEC decoder per stream",
}


@dataclass(frozen=True)
class Clip:
    """What was decoded: the report names it."""

    path: str
    codec: str
    profile: str | None
    width: int
    height: int
    pix_fmt: str
    fps: float
    frames: int
    gop: int | None
    bitrate_mbps: float

    @classmethod
    def probe(cls, path: Path) -> Clip:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            context = stream.codec_context
            keys = [i for i, p in enumerate(container.demux(stream)) if p.size and p.is_keyframe]
            gop = keys[1] - keys[0] if len(keys) > 1 else None
            duration = float(stream.frames / stream.average_rate) if stream.average_rate else 0.0
            return cls(
                path=str(path),
                codec=context.name,
                profile=context.profile,
                width=context.width,
                height=context.height,
                pix_fmt=str(context.pix_fmt),
                fps=float(stream.average_rate or 0),
                frames=stream.frames,
                gop=gop,
                bitrate_mbps=round(path.stat().st_size * 8 / duration / 1e6, 2) if duration else 0,
            )


def open_streams(
    clip: Clip, decoder: DecoderName, count: int, gpu: int, metrics: WorkerMetrics
) -> list[CameraStream]:
    options = CaptureOptions(buffer_size=1, loop=True, realtime=False, decoder=decoder, gpu=gpu)
    streams = []
    for i in range(count):
        camera = CameraAssignment(
            name=f"s{i:02d}",
            url=f"file://{Path(clip.path).resolve()}",
            timeout_seconds=10,
            fps=clip.fps,
            sampling=Sampling(),
            priority=100,
        )
        streams.append(CameraStream(camera, metrics.camera(camera.name), options))
    return streams


def wait_until_streaming(streams: list[CameraStream], timeout: float) -> list[str]:
    """Errors of the streams that did not deliver a first frame in time (empty: all did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(s.last_index >= 0 for s in streams):
            return []
        if any(s.state is StreamState.BACKOFF for s in streams):
            break
        time.sleep(0.05)
    return [f"{s.name}: {s.last_error or s.state.value}" for s in streams if s.last_index < 0]


def run_point(
    clip: Clip, decoder: DecoderName, count: int, gpu: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """One (decoder, N) measurement: N cameras started, warmed up, counted over ``seconds``."""
    point: dict[str, Any] = {"decoder": decoder, "streams": count}
    streams = open_streams(clip, decoder, count, gpu, WorkerMetrics(f"bench-{decoder}"))
    try:
        for stream in streams:
            stream.start()
        errors = wait_until_streaming(streams, SETUP_TIMEOUT_S)
        demoted = [
            f"{s.name}: {s.decoder_fallback_reason}" for s in streams if s.decoder != decoder
        ]
        if errors or demoted:
            return point | {"error": "; ".join((errors + demoted)[:3])}
        time.sleep(warmup)  # decoders past their first GOP, threads spun up
        before = [s.last_index for s in streams]
        cpu_before, started = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        after = [s.last_index for s in streams]
        cpu_after, elapsed = time.process_time(), time.perf_counter() - started
        failed = [
            f"{s.name}: {s.last_error}" for s in streams if s.state is not StreamState.STREAMING
        ]
    finally:
        for stream in streams:
            stream.stop()
    per_stream = [(b - a) / elapsed for a, b in zip(before, after, strict=True)]
    total = sum(per_stream)
    frames = sum(b - a for a, b in zip(before, after, strict=True))
    point |= {
        "seconds": round(elapsed, 2),
        "frames": frames,
        "fps": round(total, 1),
        "per_stream_fps_mean": round(total / count, 1),
        "per_stream_fps_min": round(min(per_stream), 1),
        "realtime_factor_mean": round(total / count / clip.fps, 2),
        "realtime_factor_min": round(min(per_stream) / clip.fps, 2),
        "process_cpu_cores": round((cpu_after - cpu_before) / elapsed, 2),
        "cpu_ms_per_frame": round((cpu_after - cpu_before) * 1000 / frames, 3) if frames else None,
    }
    if failed:
        point["error"] = "; ".join(failed[:3])
    return point


def gpu_name(gpu: int) -> str:
    if importlib.util.find_spec("torch") is None:
        return "none (torch not installed)"
    import torch  # optional (kubevision[gpu])

    if not torch.cuda.is_available() or gpu >= torch.cuda.device_count():
        return "none visible to torch"
    return f"{torch.cuda.get_device_name(gpu)} (cuda:{gpu})"


def versions() -> dict[str, str]:
    found = {}
    for package in ("av", "torch", "pynvvideocodec", "numpy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def measure(args: argparse.Namespace) -> dict[str, Any]:
    clip = Clip.probe(args.clip)
    reason = nvdec_unavailable_reason(args.gpu)
    started = time.monotonic()
    points: list[dict[str, Any]] = []
    for decoder in DECODERS:
        for count in args.streams:
            if decoder == "nvdec" and reason is not None:
                points.append({"decoder": decoder, "streams": count, "unavailable": reason})
                continue
            needed = args.warmup + args.seconds + TEARDOWN_ALLOWANCE_S
            if time.monotonic() - started + needed > args.budget_s:
                points.append({"decoder": decoder, "streams": count, "skipped": "time budget"})
                continue
            log.info("measuring decoder=%s streams=%d", decoder, count)
            point = run_point(clip, decoder, count, args.gpu, args.warmup, args.seconds)
            log.info("result %s", point)
            points.append(point)
    return {
        "benchmark": NAME,
        "what": "aggregate decode throughput, N concurrent streams of one clip, CPU vs NVDEC",
        "timed": TIMED,
        "clip": asdict(clip),
        "hardware": {
            "cpu": machine(),
            "cpu_cores": os.cpu_count(),
            "gpu": gpu_name(args.gpu),
            "python": platform.python_version(),
        },
        "versions": versions(),
        "nvdec": {"available": reason is None, "reason": reason},
        "warmup_s": args.warmup,
        "seconds_per_point": args.seconds,
        "wall_s": round(time.monotonic() - started, 1),
        "points": points,
        "nvdec_over_cpu": ratios(points),
    }


def ratios(points: list[dict[str, Any]]) -> dict[str, float]:
    """NVDEC frames/s over CPU frames/s, per stream count measured on both."""
    fps = {(p["decoder"], p["streams"]): p.get("fps") for p in points if "error" not in p}
    return {
        str(count): round(nvdec / cpu, 2)
        for (decoder, count), nvdec in fps.items()
        if decoder == "nvdec" and nvdec and (cpu := fps.get(("cpu", count)))
    }


def markdown(result: dict[str, Any]) -> str:
    clip, hardware = result["clip"], result["hardware"]
    lines = [
        "# Decode throughput: CPU (FFmpeg) vs NVDEC, N concurrent streams",
        "",
        f"Clip: `{Path(clip['path']).name}`: {clip['codec']} {clip['profile']}, "
        f"{clip['width']}x{clip['height']} {clip['pix_fmt']}, {clip['fps']:g} fps, "
        f"{clip['frames']} frames, GOP {clip['gop']}, {clip['bitrate_mbps']} Mbit/s, "
        "looped by each stream.",
        f"CPU: {hardware['cpu']}. GPU: {hardware['gpu']}. Python {hardware['python']}, "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        "Timed, per decoder (frames delivered to each camera's latest-frame buffer over "
        f"{result['seconds_per_point']} s after a {result['warmup_s']} s warm-up):",
        "",
        *(f"- **{name}**: {what}" for name, what in result["timed"].items()),
        "",
    ]
    if not result["nvdec"]["available"]:
        lines += [f"NVDEC unavailable: {result['nvdec']['reason']}", ""]
    lines += [
        "| decoder | streams | frames/s | per stream (mean / min) | real-time x "
        f"{clip['fps']:g} fps (mean / min) | process CPU (cores) | CPU ms / frame |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["points"]:
        status = p.get("unavailable") or p.get("skipped") or p.get("error")
        if "fps" not in p:
            lines.append(f"| {p['decoder']} | {p['streams']} | - | {status} | | | |")
            continue
        lines.append(
            f"| {p['decoder']} | {p['streams']} | {p['fps']:,.0f} | "
            f"{p['per_stream_fps_mean']:,.0f} / {p['per_stream_fps_min']:,.0f} | "
            f"{p['realtime_factor_mean']:.2f} / {p['realtime_factor_min']:.2f} | "
            f"{p['process_cpu_cores']:.1f} | {p['cpu_ms_per_frame']} |"
            + (f" error: {p['error']}" if "error" in p else "")
        )
    if result["nvdec_over_cpu"]:
        lines += [
            "",
            "NVDEC / CPU frames/s: "
            + ", ".join(f"{n} streams {r:g}x" for n, r in result["nvdec_over_cpu"].items()),
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clip", type=Path, required=True, help="the clip made by benchmarks/gpu/make_clip.sh"
    )
    parser.add_argument(
        "--streams",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=STREAMS,
        help="comma-separated stream counts (default 1,4,16,32,64)",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each window")
    parser.add_argument(
        "--budget-s", type=float, default=170.0, help="points that would end later are skipped"
    )
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device NVDEC decodes on")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json/.md")
    args = parser.parse_args(argv)
    if not args.clip.is_file():
        parser.error(f"no clip at {args.clip} (make one with benchmarks/gpu/make_clip.sh)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kubevision.worker.capture").setLevel(logging.WARNING)
    args = parse_args(argv)
    result = measure(args)
    write_results(args.out, NAME, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
