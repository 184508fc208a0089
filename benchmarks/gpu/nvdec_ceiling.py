"""Benchmark: the NVDEC ceiling of this GPU, and how much of it the worker's NVDEC path gets.

One run, one table, from the hardware's rate down to the worker's:

* **decode**: NVDEC alone. The clip's packets are demuxed and rewritten to Annex B once, before
  timing, so demux is not the bound; each decoder loops over them (starting one GOP apart) and
  the frames PyNvVideoCodec returns are counted and dropped.
* **bgr-sync**: decode plus the worker's NV12->BGR conversion (:class:`BgrConverter`) on the
  decoder's CUDA stream, synchronised once per packet, as :class:`NvdecDecoder` does.
* **bgr-event**: the same conversion with one CUDA event per packet instead of the host
  synchronisation, waited for only if the GPU has not reached it by the next ``Decode``.
* **rgb**: PyNvVideoCodec's own colour conversion (``OutputColorType.RGB``) plus a channel flip
  into a new tensor (the copy the decoder's reused buffer needs anyway); its accuracy against
  ``BgrConverter`` is checked once per run.
* **worker**: the worker's path as it runs in production: one
  :class:`~kubevision.worker.capture.CameraStream` (PyAV demux from the file, capture thread,
  :class:`NvdecDecoder`, latest-frame buffer) per stream, unpaced and looping.
* **worker-exact**: the same with ``NVDEC_RGB_SPECS`` emptied, so the clip is converted by
  :class:`BgrConverter` (the exact path untagged and full-range streams take).
* **worker-baseline**: the same with ``capture.py`` and ``nvdec.py`` loaded from ``--baseline``
  (a copy of the committed files), so before and after run side by side.

Each level runs with one thread per decoder (the worker's way), or ``/tT`` threads each serving
several decoders round robin, in one process or ``/pP`` processes (decoders split evenly), so
the table says whether Python's GIL or the hardware is the bound. Per point: frames/s, per
stream, process CPU, and "in Decode": the seconds all threads spent inside ``Decode`` per second
of wall time (above 1 means the calls overlap, i.e. ``Decode`` releases the GIL), plus
``nvidia-smi``'s decoder and GPU utilisation sampled during the window.

    python -m benchmarks.gpu.nvdec_ceiling --clip CLIP.mp4 --baseline DIR \\
        --configs 'decode@1,4,16,64;bgr-sync@16;worker@16' [--seconds 3] [--out DIR]

writes ``gpu_nvdec_ceiling.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import logging
import multiprocessing as mp
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt

from benchmarks.common import machine, write_results
from benchmarks.gpu.decode_throughput import Clip, versions
from kubevision.worker.nvdec import ColorSpec

log = logging.getLogger("benchmarks.gpu.nvdec_ceiling")

RESULTS = Path(__file__).resolve().parents[1] / "results"
NAME = "gpu_nvdec_ceiling"
LEVELS = ("decode", "bgr-sync", "bgr-event", "rgb", "worker", "worker-exact", "worker-baseline")
DECODE_LEVELS = ("decode", "bgr-sync", "bgr-event", "rgb")
PROFILE_RATE_HZ = 100
START_TIMEOUT_S = 90.0
"""Longest wait for every decoder or camera of a point to deliver its first frame."""
GO_DELAY_S = 0.3
"""Between the last process reporting ready and the common start of the window."""
TIMED = {
    "decode": "PyNvVideoCodec Decode of pre-demuxed Annex B packets (in memory), frames counted",
    "bgr-sync": "decode + NV12->BGR (BgrConverter, torch) on the decoder's stream, "
    "stream synchronised per packet",
    "bgr-event": "decode + NV12->BGR on the decoder's stream, one CUDA event per packet, waited "
    "for (only if not reached) before the next Decode, as the worker's NvdecDecoder does",
    "rgb": "decode with PyNvVideoCodec's RGB output + a channel flip to a new BGR tensor, "
    "stream synchronised per packet",
    "worker": "the worker's CameraStream per stream: PyAV demux from the file + NvdecDecoder "
    "(NVDEC, NV12->BGR) + latest-frame buffer, unpaced, looping",
    "worker-exact": "as worker, with NVDEC_RGB_SPECS emptied: every stream converted by "
    "BgrConverter (torch) instead of PyNvVideoCodec's RGB output",
    "worker-baseline": "as worker, with capture.py and nvdec.py as committed before this change",
}


# -- what to run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One row group: a level, how it is threaded and split over processes, the stream counts.

    ``threads`` None: one thread per decoder (per camera for the worker levels); else that
    many threads per process, each serving its share of the decoders round robin.
    """

    level: str
    streams: tuple[int, ...]
    threads: int | None = None
    processes: int = 1

    @property
    def name(self) -> str:
        threads = "" if self.threads is None else f"/t{self.threads}"
        processes = "" if self.processes == 1 else f"/p{self.processes}"
        return f"{self.level}{threads}{processes}"

    @classmethod
    def parse(cls, text: str) -> Config:
        """``LEVEL[/tT][/pP]@N1,N2,...``, e.g. ``decode/t4/p8@64,128``."""
        match = re.fullmatch(r"([a-z-]+)((?:/[tp]\d+)*)@(\d+(?:,\d+)*)", text.strip())
        if match is None:
            raise ValueError(f"config {text!r} is not LEVEL[/tT][/pP]@N1,N2,...")
        level, options, streams = match.groups()
        if level not in LEVELS:
            raise ValueError(f"config {text!r}: level must be one of {LEVELS}")
        values = dict(re.findall(r"/([tp])(\d+)", options))
        threads = int(values["t"]) if "t" in values else None
        config = cls(
            level, tuple(int(n) for n in streams.split(",")), threads, int(values.get("p", 1))
        )
        if threads is not None and level not in DECODE_LEVELS:
            raise ValueError(f"config {text!r}: the worker levels run one thread per camera")
        if min(config.streams) < 1 or config.processes < 1 or (threads is not None and threads < 1):
            raise ValueError(f"config {text!r}: counts must be >= 1")
        if min(config.streams) < config.processes:
            raise ValueError(f"config {text!r}: fewer streams than processes")
        return config


def shares(total: int, parts: int) -> list[int]:
    """``total`` decoders split over ``parts`` processes as evenly as possible."""
    return [total // parts + (i < total % parts) for i in range(parts)]


# -- the clip's packets, in memory ------------------------------------------------------------


@dataclass(frozen=True)
class Packets:
    """The clip as NVDEC reads it: Annex B payloads in decode order, and where GOPs start."""

    payloads: list[npt.NDArray[np.uint8]] = field(repr=False)
    pts: list[int]
    keys: list[int]
    low_latency: bool
    """No B-frames: decoders run in NVDEC's low-latency mode, as the worker's do."""
    color: ColorSpec

    @classmethod
    def load(cls, clip: Path) -> Packets:
        from kubevision.worker.nvdec import AnnexB

        payloads: list[npt.NDArray[np.uint8]] = []
        pts: list[int] = []
        keys: list[int] = []
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            context = stream.codec_context
            low_latency = not context.has_b_frames
            color = ColorSpec.of_stream(context.colorspace, context.color_range, context.height)
            annexb = AnnexB(stream)
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_keyframe:
                    keys.append(len(payloads))
                for payload, stamp in annexb(packet):
                    payloads.append(payload.copy())
                    pts.append(stamp or 0)
        return cls(payloads, pts, keys, low_latency, color)

    def start_of(self, unit: int) -> int:
        """Where decoder ``unit`` starts: one GOP after the previous one, so key frames of
        different streams do not all arrive together."""
        return self.keys[unit % len(self.keys)]


# -- decode levels -----------------------------------------------------------------------------


class Level(Protocol):
    """A way of decoding ``count`` streams that runs until stopped and counts frames."""

    def start(self, count: int, threads: int | None) -> None: ...

    def frames(self) -> list[int]: ...

    def decode_seconds(self) -> float | None: ...

    def errors(self) -> list[str]: ...

    def stop(self) -> None: ...


class _Unit:
    """One NVDEC decoder looping over the packets, with its own CUDA stream."""

    def __init__(self, level: str, index: int, packets: Packets, gpu: int) -> None:
        import torch

        from kubevision.worker.nvdec import BgrConverter

        nvc: Any = importlib.import_module("PyNvVideoCodec")
        self._torch, self._nvc = torch, nvc
        self.level = level
        self.packets = packets
        self.cursor = packets.start_of(index)
        self.frames = 0
        self.stream = torch.cuda.Stream(torch.device("cuda", gpu))
        color = nvc.OutputColorType.RGB if level == "rgb" else nvc.OutputColorType.NATIVE
        latency = nvc.DisplayDecodeLatencyType
        self.decoder = nvc.CreateDecoder(
            gpuid=gpu,
            codec=nvc.cudaVideoCodec.H264,
            cudastream=self.stream.cuda_stream,
            usedevicememory=True,
            outputColorType=color,
            latency=latency.LOW if packets.low_latency else latency.NATIVE,
        )
        self.flag = nvc.VideoPacketFlag.ENDOFPICTURE if packets.low_latency else None
        self.convert = BgrConverter(packets.color, torch.device("cuda", gpu))
        self.ready: Any = None

    def step(self) -> float:
        """Decode the next packet (and convert, per level); returns the seconds in Decode."""
        from kubevision.worker.nvdec import surface_to_bgr

        torch = self._torch
        payload = self.packets.payloads[self.cursor]
        packet = self._nvc.PacketData()
        packet.bsl_data = payload.ctypes.data
        packet.bsl = payload.size
        packet.pts = self.packets.pts[self.cursor]
        if self.flag is not None:
            packet.decode_flag = self.flag
        self.cursor = (self.cursor + 1) % len(self.packets.payloads)
        if self.level == "decode":
            started = time.perf_counter()
            self.frames += len(self.decoder.Decode(packet))
            return time.perf_counter() - started
        if self.ready is not None and not self.ready.query():
            self.ready.synchronize()  # bgr-event: the surface the last conversion read is free
        with torch.cuda.stream(self.stream):
            started = time.perf_counter()
            decoded = self.decoder.Decode(packet)
            spent = time.perf_counter() - started
            for frame in decoded:
                surface = torch.utils.dlpack.from_dlpack(frame)
                if self.level == "rgb":
                    surface.flip(-1)
                else:
                    surface_to_bgr(surface, "NV12", self.convert)
            if self.level == "bgr-event" and decoded:
                self.ready = torch.cuda.Event()
                self.ready.record(self.stream)
        if self.level != "bgr-event":
            self.stream.synchronize()
        self.frames += len(decoded)
        return spent


class DecodeLevel:
    """``count`` decoders of one level, kept between points (creating 192 takes a while)."""

    def __init__(self, level: str, packets: Packets, gpu: int) -> None:
        self._level, self._packets, self._gpu = level, packets, gpu
        self._units: dict[int, _Unit] = {}
        self._running: list[_Unit | None] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._busy: list[float] = []
        self._errors: list[str] = []

    def start(self, count: int, threads: int | None) -> None:
        self._stop.clear()
        self._running = [None] * count
        workers = count if threads is None else min(threads, count)
        self._busy = [0.0] * workers
        self._threads = [
            threading.Thread(
                target=self._serve,
                args=(w, list(range(w, count, workers))),
                name=f"nvdec-{w}",
                daemon=True,
            )
            for w in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def _unit(self, index: int) -> _Unit:
        if index not in self._units:
            self._units[index] = _Unit(self._level, index, self._packets, self._gpu)
        return self._units[index]

    def _serve(self, worker: int, indexes: list[int]) -> None:
        try:
            units = [self._unit(i) for i in indexes]  # created in parallel, one per thread
            for index, unit in zip(indexes, units, strict=True):
                unit.frames = 0
                self._running[index] = unit
            busy = 0.0
            while not self._stop.is_set():
                for unit in units:
                    busy += unit.step()
                self._busy[worker] = busy
        except Exception as exc:  # noqa: BLE001 - reported in the point, the others go on
            with self._lock:
                self._errors.append(f"{type(exc).__name__}: {exc}")

    def frames(self) -> list[int]:
        return [unit.frames if unit is not None else 0 for unit in self._running]

    def decode_seconds(self) -> float | None:
        return sum(self._busy)

    def errors(self) -> list[str]:
        return list(self._errors)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        for unit in self._running:
            if unit is not None:
                unit.stream.synchronize()


# -- worker levels ---------------------------------------------------------------------------


def load_baseline(directory: Path) -> types.ModuleType:
    """The committed ``capture.py`` importing the committed ``nvdec.py``, as modules of their
    own (``kubevision_baseline.*``), so both versions run in one process."""
    package = types.ModuleType("kubevision_baseline")
    package.__path__ = []
    sys.modules["kubevision_baseline"] = package
    spec = importlib.util.spec_from_file_location(
        "kubevision_baseline.nvdec", directory / "nvdec.py"
    )
    assert spec is not None
    assert spec.loader is not None
    nvdec = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = nvdec
    spec.loader.exec_module(nvdec)
    source = (directory / "capture.py").read_text()
    capture = types.ModuleType("kubevision_baseline.capture")
    capture.__file__ = str(directory / "capture.py")
    sys.modules[capture.__name__] = capture
    code = compile(
        source.replace("kubevision.worker.nvdec", nvdec.__name__), capture.__file__, "exec"
    )
    exec(code, capture.__dict__)  # the repository's own file, one commit older
    return capture


class WorkerLevel:
    """``count`` worker cameras (one capture thread each) reading the clip unpaced."""

    def __init__(
        self, capture: types.ModuleType, clip: Clip, gpu: int, *, exact: bool = False
    ) -> None:
        self._capture, self._clip, self._gpu = capture, clip, gpu
        self._exact = exact
        self._streams: list[Any] = []
        self._specs: frozenset[Any] | None = None

    def start(self, count: int, threads: int | None) -> None:
        from kubevision.api.camera import Sampling
        from kubevision.api.worker_config import CameraAssignment
        from kubevision.worker import nvdec
        from kubevision.worker.metrics import WorkerMetrics

        if self._exact:  # until stop(): the capture threads build their decoders meanwhile
            self._specs, nvdec.NVDEC_RGB_SPECS = nvdec.NVDEC_RGB_SPECS, frozenset()
        metrics = WorkerMetrics("nvdec-ceiling")
        options = self._capture.CaptureOptions(
            buffer_size=1, loop=True, realtime=False, decoder="nvdec", gpu=self._gpu
        )
        url = f"file://{Path(self._clip.path).resolve()}"
        for i in range(count):
            camera = CameraAssignment(
                name=f"s{i:03d}",
                url=url,
                timeout_seconds=10,
                fps=self._clip.fps,
                sampling=Sampling(),
                priority=100,
            )
            stream = self._capture.CameraStream(camera, metrics.camera(camera.name), options)
            self._streams.append(stream)
            stream.start()

    def frames(self) -> list[int]:
        return [s.last_index + 1 for s in self._streams]

    def decode_seconds(self) -> float | None:
        return None

    def errors(self) -> list[str]:
        demoted = [
            f"{s.name}: on CPU: {s.decoder_fallback_reason}"
            for s in self._streams
            if s.decoder != "nvdec"
        ]
        failed = [
            f"{s.name}: {s.last_error}"
            for s in self._streams
            if s.state.value in ("backoff", "finished")
        ]
        return demoted + failed

    def stop(self) -> None:
        for stream in self._streams:
            stream.stop(timeout=0)
        for stream in self._streams:
            stream.stop()
        self._streams = []
        if self._specs is not None:
            from kubevision.worker import nvdec

            nvdec.NVDEC_RGB_SPECS, self._specs = self._specs, None


# -- one point -------------------------------------------------------------------------------


@dataclass
class Window:
    """What one process counted over the common window."""

    frames: list[int]
    cpu_s: float
    decode_s: float | None
    errors: list[str]


def wait_started(level: Level, timeout: float) -> list[str]:
    """Errors if not every decoder delivered a frame within ``timeout`` (empty: all did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (errors := level.errors()) and not all(level.frames()):
            return errors
        if all(level.frames()):
            return []
        time.sleep(0.05)
    return [f"{sum(f == 0 for f in level.frames())} decoders gave no frame in {timeout:.0f}s"]


def count_window(level: Level, start: float, warmup: float, seconds: float) -> Window:
    """Counts between ``start + warmup`` and that plus ``seconds`` (monotonic clock, shared by
    the processes of one point)."""
    time.sleep(max(0.0, start + warmup - time.monotonic()))
    frames0, cpu0, busy0 = level.frames(), time.process_time(), level.decode_seconds()
    time.sleep(max(0.0, start + warmup + seconds - time.monotonic()))
    frames1, cpu1, busy1 = level.frames(), time.process_time(), level.decode_seconds()
    decode_s = None if busy0 is None or busy1 is None else busy1 - busy0
    return Window(
        [b - a for a, b in zip(frames0, frames1, strict=True)],
        cpu1 - cpu0,
        decode_s,
        level.errors(),
    )


def make_level(
    level: str, packets: Packets | None, clip: Clip, baseline: Path | None, gpu: int
) -> Level:
    if level in DECODE_LEVELS:
        assert packets is not None
        return DecodeLevel(level, packets, gpu)
    if level == "worker-baseline":
        if baseline is None:
            raise ValueError("worker-baseline needs --baseline")
        return WorkerLevel(load_baseline(baseline), clip, gpu)
    from kubevision.worker import capture

    return WorkerLevel(capture, clip, gpu, exact=level == "worker-exact")


def child_main(
    conn: Connection, clip_path: str, level: str, baseline: str | None, gpu: int
) -> None:
    """A decoding process: builds its level once, then runs points on command."""
    clip = Clip.probe(Path(clip_path))
    packets = Packets.load(Path(clip_path)) if level in DECODE_LEVELS else None
    runner = make_level(level, packets, clip, Path(baseline) if baseline else None, gpu)
    conn.send("loaded")
    while (command := conn.recv())[0] == "point":
        _, count, threads, warmup, seconds = command
        runner.start(count, threads)
        conn.send(("ready", wait_started(runner, START_TIMEOUT_S)))
        start = conn.recv()
        window = count_window(runner, start, warmup, seconds)
        runner.stop()
        conn.send(asdict(window))


class Processes:
    """``processes`` children running one level; points run in all of them at once."""

    def __init__(
        self, processes: int, clip: Clip, level: str, baseline: Path | None, gpu: int
    ) -> None:
        context = mp.get_context("spawn")
        self._pipes: list[Connection] = []
        self._children = []
        for _ in range(processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=child_main,
                args=(child, clip.path, level, str(baseline) if baseline else None, gpu),
                daemon=True,
            )
            process.start()
            self._pipes.append(parent)
            self._children.append(process)
        for pipe in self._pipes:
            if pipe.recv() != "loaded":
                raise RuntimeError("a decoding process failed to start")

    def point(
        self, count: int, threads: int | None, warmup: float, seconds: float, sampler: UtilSampler
    ) -> tuple[list[Window], dict[str, Any]]:
        for pipe, share in zip(self._pipes, shares(count, len(self._pipes)), strict=True):
            pipe.send(("point", share, threads, warmup, seconds))
        errors = [e for pipe in self._pipes for e in pipe.recv()[1]]
        start = time.monotonic() + GO_DELAY_S
        for pipe in self._pipes:
            pipe.send(start)
        windows = [Window(**pipe.recv()) for pipe in self._pipes]
        if errors:
            windows[0].errors.extend(errors)
        return windows, sampler.between(start + warmup, start + warmup + seconds)

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.send(("quit",))
        for process in self._children:
            process.join(30)


def run_in_process(
    runner: Level,
    count: int,
    threads: int | None,
    warmup: float,
    seconds: float,
    sampler: UtilSampler,
    during: Callable[[], None] | None,
) -> tuple[list[Window], dict[str, Any]]:
    runner.start(count, threads)
    try:
        errors = wait_started(runner, START_TIMEOUT_S)
        start = time.monotonic()
        window = count_window(runner, start, warmup, seconds)
        window.errors.extend(errors)
        if during is not None and not errors:
            during()
    finally:
        runner.stop()
    return [window], sampler.between(start + warmup, start + warmup + seconds)


def summarise(
    config: Config,
    count: int,
    windows: list[Window],
    seconds: float,
    fps: float,
    util: dict[str, Any],
) -> dict[str, Any]:
    per_stream = [n / seconds for w in windows for n in w.frames]
    frames = sum(sum(w.frames) for w in windows)
    cpu_s = sum(w.cpu_s for w in windows)
    decode_s = [w.decode_s for w in windows if w.decode_s is not None]
    point: dict[str, Any] = {
        "config": config.name,
        "level": config.level,
        "threads_per_process": "one per stream" if config.threads is None else config.threads,
        "processes": config.processes,
        "streams": count,
        "seconds": seconds,
        "frames": frames,
        "fps": round(frames / seconds, 1),
        "per_stream_fps_mean": round(frames / seconds / count, 1),
        "per_stream_fps_min": round(min(per_stream), 1) if per_stream else None,
        "realtime_streams": round(frames / seconds / fps, 1) if fps else None,
        "process_cpu_cores": round(cpu_s / seconds, 2),
        "cpu_ms_per_frame": round(cpu_s * 1000 / frames, 3) if frames else None,
        "in_decode_per_s": round(sum(decode_s) / seconds, 2) if decode_s else None,
        **util,
    }
    if errors := [e for w in windows for e in w.errors]:
        point["error"] = "; ".join(dict.fromkeys(errors))[:400]
    return point


# -- nvidia-smi ------------------------------------------------------------------------------


class UtilSampler:
    """``nvidia-smi``'s decoder and GPU utilisation every ``interval_ms``, stamped on arrival."""

    FIELDS = ("utilization.decoder", "utilization.gpu")

    def __init__(self, gpu: int, interval_ms: int = 200) -> None:
        self.reason: str | None = None
        self._samples: list[tuple[float, list[float]]] = []
        command = [
            "nvidia-smi",
            f"--id={gpu}",
            f"--query-gpu={','.join(self.FIELDS)}",
            "--format=csv,noheader,nounits",
            "-lms",
            str(interval_ms),
        ]
        try:
            self._process: subprocess.Popen[str] | None = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        except OSError as exc:
            self._process, self.reason = None, f"nvidia-smi: {exc}"
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                values = [float(v) for v in line.split(",")]
            except ValueError:
                self.reason = f"nvidia-smi: {line.strip()}"
                continue
            self._samples.append((time.monotonic(), values))

    def between(self, start: float, end: float) -> dict[str, Any]:
        samples = [v for t, v in self._samples if start <= t <= end]
        if not samples:
            return {"nvdec_util_pct": None, "gpu_util_pct": None}
        decoder, gpu = zip(*samples, strict=True)
        return {
            "nvdec_util_pct": round(statistics.fmean(decoder), 1),
            "nvdec_util_max_pct": max(decoder),
            "gpu_util_pct": round(statistics.fmean(gpu), 1),
        }

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()


# -- one-off checks --------------------------------------------------------------------------


def checks(packets: Packets, clip: Path, videos: Sequence[Path], gpu: int) -> dict[str, Any]:
    """Facts the fixes rely on: how PyNvVideoCodec's RGB compares with BgrConverter on the
    clip and on ``videos`` (other colour tags), whether a decoder keeps decoding after an
    end-of-stream flush (a looping file), and how late the worker's decoder hands pictures
    out in its latency mode."""
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("rgb_vs_bgr_converter", lambda: rgb_accuracy(packets, gpu)),
        *((f"rgb_vs_bgr_converter {v.name}", _rgb_accuracy_of(v, gpu)) for v in videos),
        ("eos_reuse", lambda: eos_reuse(packets, gpu)),
        ("decoder_caps", lambda: decoder_caps(gpu)),
        *((f"worker_decoder_lag {v.name}", _lags_of(v, gpu)) for v in (clip, *videos)),
    ]
    found: dict[str, Any] = {}
    for name, check in runs:
        try:
            found[name] = check()
        except Exception as exc:  # noqa: BLE001 - a failed check is a finding, not a crash
            found[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def _rgb_accuracy_of(video: Path, gpu: int) -> Callable[[], dict[str, Any]]:
    return lambda: rgb_accuracy(Packets.load(video), gpu)


def _lags_of(video: Path, gpu: int) -> Callable[[], dict[str, Any]]:
    return lambda: decoder_lag(video, gpu)


def decoder_lag(video: Path, gpu: int) -> dict[str, Any]:
    """How many packets after its own each picture leaves the worker's NvdecDecoder (the
    latency its mode adds: 33 ms a packet at 30 FPS)."""
    from kubevision.worker.nvdec import NvdecDecoder

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        decoder = NvdecDecoder(stream, gpu)
        submitted: dict[int | None, int] = {}
        lags: list[int] = []
        for index, packet in enumerate(container.demux(stream)):
            if packet.size:
                submitted[packet.pts] = index
            lags += [index - submitted[picture.pts] for picture in decoder.decode(packet)]
        decoder.close()
    return {
        "mode": "LOW" if decoder.low_latency else "NATIVE",
        "nvdec_rgb": decoder.native_rgb,
        "pictures": len(lags),
        "pictures_by_packets_late": dict(sorted(Counter(lags).items())),
    }


def _decode_all(unit: _Unit, count: int, flush: bool = True) -> list[Any]:
    """Frames of the next ``count`` packets (and an end-of-stream flush), as torch tensors
    copied out of the decoder's buffers."""
    torch = unit._torch
    out = []
    with torch.cuda.stream(unit.stream):
        for i in range(count + flush):
            packet = unit._nvc.PacketData()
            if i < count:
                payload = unit.packets.payloads[unit.cursor]
                packet.bsl_data, packet.bsl = payload.ctypes.data, payload.size
                packet.pts = unit.packets.pts[unit.cursor]
                unit.cursor = (unit.cursor + 1) % len(unit.packets.payloads)
            for frame in unit.decoder.Decode(packet):
                out.append(torch.utils.dlpack.from_dlpack(frame).clone())
    unit.stream.synchronize()
    return out


def rgb_accuracy(packets: Packets, gpu: int) -> dict[str, Any]:
    from kubevision.worker.nvdec import surface_to_bgr

    frames = 60
    native, rgb = _Unit("bgr-sync", 0, packets, gpu), _Unit("rgb", 0, packets, gpu)
    ours = [surface_to_bgr(s, "NV12", native.convert) for s in _decode_all(native, frames)]
    theirs = _decode_all(rgb, frames)
    shape = tuple(theirs[0].shape)
    diffs = [(a.int() - b.flip(-1).int()).abs() for a, b in zip(ours, theirs, strict=True)]
    return {
        "color": f"{packets.color.matrix.value}{' full range' if packets.color.full_range else ''}",
        "frames": len(diffs),
        "rgb_shape": shape,
        "max_abs_diff": int(max(d.max().item() for d in diffs)),
        "mean_abs_diff": round(float(np.mean([d.float().mean().item() for d in diffs])), 4),
        "share_over_1": round(float(np.mean([(d > 1).float().mean().item() for d in diffs])), 5),
    }


def decoder_caps(gpu: int) -> dict[str, Any]:
    """What the driver says this GPU's NVDEC can do for 8-bit 4:2:0 H.264 (engine count)."""
    nvc: Any = importlib.import_module("PyNvVideoCodec")
    formats = nvc.cudaVideoChromaFormat
    names = [n for n in dir(formats) if "420" in n]
    if not names:
        raise LookupError(f"no 4:2:0 member in cudaVideoChromaFormat: {dir(formats)}")
    chroma = getattr(formats, names[0])
    codec = nvc.cudaVideoCodec.H264
    return dict(nvc.GetDecoderCaps(gpuid=gpu, codec=codec, chromaformat=chroma, bitdepth=8))


def eos_reuse(packets: Packets, gpu: int) -> dict[str, Any]:
    started = time.perf_counter()
    unit = _Unit("decode", 0, packets, gpu)
    first = _decode_all(unit, 30, flush=False)
    first_ms = (time.perf_counter() - started) * 1000
    unit.cursor = 0
    passes = [len(_decode_all(unit, len(packets.payloads))) for _ in range(2)]
    return {
        "packets_per_pass": len(packets.payloads),
        "frames_per_pass": passes,
        "create_to_30_frames_ms": round(first_ms, 1),
        "frames_in_first_30": len(first),
    }


# -- the run ---------------------------------------------------------------------------------


def profile_hook(args: argparse.Namespace, config: Config, count: int) -> Callable[[], None] | None:
    """py-spy over the running point (after its window), when ``--profile`` names it."""
    if args.py_spy is None or f"{config.name}@{count}" not in args.profile:
        return None

    def record() -> None:
        out = args.out / f"pyspy_{config.name.replace('/', '_')}_{count}.txt"
        base = [
            str(args.py_spy),
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            str(PROFILE_RATE_HZ),
            "--duration",
            str(args.profile_seconds),
            "--format",
            "raw",
            "--gil",
            "--output",
            str(out),
        ]
        done = subprocess.run(base, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log.warning("py-spy failed: %s", done.stderr.strip()[-300:])
            return
        log.info("py-spy wrote %s", out)
        args.profiles[f"{config.name}@{count}"] = summarise_profile(out, args.profile_seconds)

    return record


def summarise_profile(path: Path, seconds: float, top: int = 12) -> dict[str, Any]:
    """A ``py-spy --gil`` profile in numbers: how much of the time some thread held the GIL
    (samples over the ticks of the window) and which Python functions held it (innermost,
    and anywhere on the stack), as shares of the GIL-holding samples. A C call that keeps the
    GIL shows as the Python function that made it."""
    innermost: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        python = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if ".py:" in f]
        if python:
            innermost[python[-1]] += samples
        for function in set(python):
            inclusive[function] += samples

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {k: round(v / total, 3) for k, v in counter.most_common(top)} if total else {}

    return {
        "file": path.name,
        "gil_held_share": round(total / (PROFILE_RATE_HZ * seconds), 3),
        "samples": total,
        "innermost_python": shares(innermost),
        "inclusive_python": shares(inclusive),
    }


def run_config(
    config: Config,
    args: argparse.Namespace,
    clip: Clip,
    packets: Packets,
    sampler: UtilSampler,
    deadline: float,
) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    processes = None
    runner: Level | None = None
    try:
        if config.processes > 1:
            processes = Processes(config.processes, clip, config.level, args.baseline, args.gpu)
        else:
            runner = make_level(config.level, packets, clip, args.baseline, args.gpu)
        for count in config.streams:
            if time.monotonic() + args.warmup + args.seconds + 10 > deadline:
                points.append({"config": config.name, "streams": count, "skipped": "time budget"})
                continue
            log.info("measuring %s streams=%d", config.name, count)
            if processes is not None:
                windows, util = processes.point(
                    count, config.threads, args.warmup, args.seconds, sampler
                )
            else:
                assert runner is not None
                windows, util = run_in_process(
                    runner,
                    count,
                    config.threads,
                    args.warmup,
                    args.seconds,
                    sampler,
                    profile_hook(args, config, count),
                )
            point = summarise(config, count, windows, args.seconds, clip.fps, util)
            log.info("result %s", point)
            points.append(point)
    except Exception as exc:  # one configuration's failure is reported, not fatal
        log.exception("config %s failed", config.name)
        points.append({"config": config.name, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        if processes is not None:
            processes.close()
        runner = None
        gc.collect()  # this configuration's NVDEC sessions go before the next one's start
    return points


def gpu_info(gpu: int) -> dict[str, str]:
    query = "name,driver_version,memory.total,clocks.max.sm"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={gpu}", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}
    return dict(zip(query.split(","), (v.strip() for v in out.split(",")), strict=False))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.budget_s
    clip = Clip.probe(args.clip)
    packets = Packets.load(args.clip)
    sampler = UtilSampler(args.gpu)
    result: dict[str, Any] = {
        "benchmark": NAME,
        "what": "NVDEC frames/s on one GPU: decode only, + BGR conversion, the worker's path",
        "timed": {level: TIMED[level] for level in dict.fromkeys(c.level for c in args.configs)},
        "clip": asdict(clip),
        "nvdec_latency_mode": "LOW (no B-frames: pictures out as decoded, see worker_decoder_lag)"
        if packets.low_latency
        else "NATIVE (B-frames: pictures held for reordering)",
        "hardware": {
            "cpu": machine(),
            "cpu_cores": os.cpu_count(),
            "gpu": gpu_info(args.gpu),
            "python": platform.python_version(),
        },
        "versions": versions(),
        "warmup_s": args.warmup,
        "seconds_per_point": args.seconds,
        "checks": checks(packets, args.clip, args.check_videos, args.gpu) if args.checks else {},
    }
    points = []
    for config in args.configs:
        points.extend(run_config(config, args, clip, packets, sampler, deadline))
    sampler.close()
    result |= {
        "nvidia_smi": sampler.reason or "sampled every 200 ms",
        "points": points,
        "profiles": args.profiles,
        "wall_s": round(time.monotonic() - started, 1),
    }
    result["peaks"] = peaks(points)
    return result


def peaks(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each configuration's best point, and its share of the best decode-only figure."""
    best: dict[str, dict[str, Any]] = {}
    for p in points:
        if "fps" in p and "error" not in p and p["fps"] > best.get(p["config"], {}).get("fps", 0):
            best[p["config"]] = {"fps": p["fps"], "streams": p["streams"]}
    ceiling = max((b["fps"] for c, b in best.items() if c.startswith("decode")), default=0)
    for b in best.values():
        b["of_ceiling"] = round(b["fps"] / ceiling, 3) if ceiling else None
    return best


def markdown(result: dict[str, Any]) -> str:
    clip, hw = result["clip"], result["hardware"]
    gpu = hw["gpu"]
    lines = [
        "# NVDEC ceiling vs the worker's NVDEC path, one run",
        "",
        f"GPU: {gpu.get('name')} (driver {gpu.get('driver_version')}, max SM clock "
        f"{gpu.get('clocks.max.sm')}, NVDEC engines "
        f"{result['checks'].get('decoder_caps', {}).get('num_decoder_engines', '?')}). "
        f"CPU: {hw['cpu']}. Python {hw['python']}, "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        f"Clip: `{Path(clip['path']).name}` (benchmarks/gpu/make_clip.sh): {clip['codec']} "
        f"{clip['profile']}, {clip['width']}x{clip['height']} {clip['pix_fmt']}, "
        f"{clip['fps']:g} fps, {clip['frames']} frames, GOP {clip['gop']}, "
        f"{clip['bitrate_mbps']} Mbit/s, looped by every stream; NVDEC latency mode "
        f"{result['nvdec_latency_mode']}.",
        f"Each point: {result['warmup_s']} s warm-up after every stream's first frame, then "
        f"{result['seconds_per_point']} s counted. nvidia-smi: {result['nvidia_smi']}.",
        "",
        *(f"- **{name}**: {what}" for name, what in result["timed"].items()),
        "",
        "| config | streams | frames/s | per stream (mean / min) | 30 fps streams | CPU cores "
        "| CPU ms / frame | in Decode / s | NVDEC util % (mean / max) | GPU util % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["points"]:
        if "fps" not in p:
            lines.append(
                f"| {p['config']} | {p.get('streams', '')} | - | "
                f"{p.get('skipped') or p.get('error')} | | | | | | |"
            )
            continue
        util = (
            f"{p['nvdec_util_pct']} / {p.get('nvdec_util_max_pct')}"
            if p.get("nvdec_util_pct") is not None
            else "-"
        )
        lines.append(
            f"| {p['config']} | {p['streams']} | {p['fps']:,.0f} | "
            f"{p['per_stream_fps_mean']:,.1f} / {p['per_stream_fps_min']:,.1f} | "
            f"{p['realtime_streams']} | {p['process_cpu_cores']} | {p['cpu_ms_per_frame']} | "
            f"{p['in_decode_per_s'] if p['in_decode_per_s'] is not None else '-'} | {util} | "
            f"{p.get('gpu_util_pct') or '-'} |" + (f" error: {p['error']}" if "error" in p else "")
        )
    lines += ["", "Peak per configuration (share of the best decode-only figure):", ""]
    lines += [
        f"- {c}: {b['fps']:,.0f} frames/s at {b['streams']} streams ({b['of_ceiling']})"
        for c, b in result["peaks"].items()
    ]
    if result["checks"]:
        lines += ["", "Checks:", ""]
        lines += [f"- {name}: {value}" for name, value in result["checks"].items()]
    for point, profile in result.get("profiles", {}).items():
        lines += [
            "",
            f"py-spy --gil over {point}: a thread held the GIL {profile['gil_held_share']:.0%} "
            f"of the time; innermost Python functions holding it (share of those samples):",
            "",
            *(f"- {f}: {v:.1%}" for f, v in profile["innermost_python"].items()),
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, required=True, help="from benchmarks/gpu/make_clip.sh")
    parser.add_argument(
        "--configs",
        required=True,
        help="';'-separated LEVEL[/tT][/pP]@N1,N2,... (levels: " + ", ".join(LEVELS) + ")",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="folder with the committed capture.py and nvdec.py (for worker-baseline)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="counted window per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="after every first frame")
    parser.add_argument(
        "--budget-s", type=float, default=400.0, help="points that would end later are skipped"
    )
    parser.add_argument(
        "--no-checks",
        dest="checks",
        action="store_false",
        help="skip the RGB accuracy and end-of-stream reuse checks",
    )
    parser.add_argument(
        "--check-videos",
        type=Path,
        nargs="*",
        default=[],
        help="more H.264 videos for the RGB accuracy check (other colour tags)",
    )
    parser.add_argument("--py-spy", type=Path, help="py-spy binary, for --profile")
    parser.add_argument("--profile", default="", help="CONFIG@N,... to profile (in-process only)")
    parser.add_argument("--profile-seconds", type=int, default=6)
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=NAME, help="results file name, without extension")
    args = parser.parse_args(argv)
    try:
        args.configs = [Config.parse(text) for text in args.configs.split(";") if text.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.configs:
        parser.error("--configs names no configuration")
    if not args.clip.is_file():
        parser.error(f"no clip at {args.clip} (make one with benchmarks/gpu/make_clip.sh)")
    needs_baseline = any(c.level == "worker-baseline" for c in args.configs)
    if needs_baseline and not (
        args.baseline
        and (args.baseline / "nvdec.py").is_file()
        and (args.baseline / "capture.py").is_file()
    ):
        parser.error("worker-baseline needs --baseline DIR holding capture.py and nvdec.py")
    args.profile = [p for p in args.profile.split(",") if p]
    args.profiles = {}
    if args.profile and (args.py_spy is None or not args.py_spy.is_file()):
        parser.error("--profile needs --py-spy pointing at the py-spy binary")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kubevision.worker.capture").setLevel(logging.WARNING)
    logging.getLogger("kubevision_baseline.capture").setLevel(logging.WARNING)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = measure(args)
    write_results(args.out, args.name, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
