"""NVDEC decoding through PyNvVideoCodec: packets in, BGR frames in GPU memory out.

The worker keeps one demuxer for both decoders: PyAV opens the source (file, RTSP, HTTP) with
the capture's timeouts and credentials, and only the packets go to NVDEC, so reconnects and
timestamps behave the same on either decoder. NVDEC's parser reads an Annex B byte stream:
H.264/HEVC packets from MP4-style containers are rewritten by FFmpeg's ``*_mp4toannexb``
filter, and parameter sets that a live source only sent out of band (SDP) are put in front of
the first packet. Decoded NV12/P016/YUV444 surfaces are read in place through DLPack and
converted to BGR on the GPU with torch, so a frame never travels through host memory, and the
host never waits for the GPU per packet: each packet's pictures carry a CUDA event
(:attr:`Picture.ready`) that consumers order their own stream after.

Nothing here needs a GPU to import: torch and PyNvVideoCodec are loaded when a decoder is
built, and :func:`nvdec_unavailable_reason` says, without raising, why NVDEC cannot be used.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import importlib.util
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import av
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

log = logging.getLogger(__name__)

DecoderChoice = Literal["auto", "cpu", "nvdec"]
DecoderName = Literal["cpu", "nvdec"]
DECODER_CHOICES: tuple[DecoderChoice, ...] = ("auto", "cpu", "nvdec")

Pixels: TypeAlias = "npt.NDArray[np.uint8] | torch.Tensor"
"""(H, W, 3) uint8 BGR: a host array from the CPU decoder, a CUDA tensor from NVDEC."""
VideoPacket: TypeAlias = "av.Packet[av.VideoStream]"

_NV_CODECS = {"h264": "H264", "hevc": "HEVC"}
"""PyAV codec name -> PyNvVideoCodec's ``cudaVideoCodec`` member; the codecs cameras send."""
_ANNEXB_START = (b"\x00\x00\x01", b"\x00\x00\x00\x01")
_KEY_PTS_KEPT = 64
"""Key-frame timestamps remembered to flag decoded frames (more than any decoder's delay)."""
_HD_HEIGHT = 720


class NvdecError(Exception):
    """NVDEC could not decode this stream (setup or decode); the message says why."""


# -- availability --------------------------------------------------------------------------


@functools.cache
def nvdec_unavailable_reason(gpu: int) -> str | None:
    """Why NVDEC cannot decode on GPU ``gpu`` here, or None when it can.

    Checks, cheapest first: the Python packages, the CUDA driver and the device, the driver's
    video libraries (a container needs the ``video`` driver capability), torch's CUDA build,
    and finally PyNvVideoCodec's own import. Cached: a machine's answer does not change while
    the process runs. Never raises.
    """
    try:
        return _first_reason(gpu)
    except Exception as exc:  # noqa: BLE001 - a probe answers with a reason, it never raises
        return f"the NVDEC probe failed: {type(exc).__name__}: {exc}"


def _first_reason(gpu: int) -> str | None:
    if gpu < 0:
        return f"GPU index must be >= 0, got {gpu}"
    checks: tuple[Callable[[], str | None], ...] = (
        functools.partial(_module_reason, "PyNvVideoCodec", "pip install 'kubevision[nvdec]'"),
        functools.partial(_module_reason, "torch", "pip install 'kubevision[gpu]'"),
        functools.partial(_cuda_device_reason, gpu),
        functools.partial(_library_reason, "libnvcuvid.so.1"),
        functools.partial(_library_reason, "libnvidia-encode.so.1"),
        functools.partial(_torch_cuda_reason, gpu),
        _pynvvideocodec_import_reason,
    )
    return next((reason for check in checks if (reason := check()) is not None), None)


def _module_reason(module: str, install: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"the Python package {module} is not installed ({install})"
    return None


def _library_reason(library: str) -> str | None:
    """A driver library PyNvVideoCodec loads: nvcuvid decodes, nvidia-encode is loaded at
    import to read the driver version. Containers get both only with the video capability."""
    try:
        ctypes.CDLL(library)
    except OSError as exc:
        return (
            f"the NVIDIA driver library {library} cannot be loaded ({exc}); in a container set "
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video"
        )
    return None


def _cuda_device_reason(gpu: int) -> str | None:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return f"no NVIDIA driver: libcuda.so.1 cannot be loaded ({exc})"
    if (result := cuda.cuInit(0)) != 0:
        return f"the CUDA driver failed: cuInit returned {_cuda_error_name(cuda, result)}"
    count = ctypes.c_int(0)
    if (result := cuda.cuDeviceGetCount(ctypes.byref(count))) != 0:
        return f"the CUDA driver failed: cuDeviceGetCount returned {_cuda_error_name(cuda, result)}"
    if gpu >= count.value:
        return f"GPU {gpu} does not exist: the CUDA driver sees {count.value} device(s)"
    return None


def _cuda_error_name(cuda: ctypes.CDLL, result: int) -> str:
    name = ctypes.c_char_p()
    if cuda.cuGetErrorName(result, ctypes.byref(name)) == 0 and name.value:
        return f"{name.value.decode()} ({result})"
    return f"CUresult {result}"


def _torch_cuda_reason(gpu: int) -> str | None:
    import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (install a CUDA build)"
    if not torch.cuda.is_available() or gpu >= torch.cuda.device_count():
        return f"torch does not see GPU {gpu} ({torch.cuda.device_count()} visible)"
    return None


def _pynvvideocodec_import_reason() -> str | None:
    try:
        importlib.import_module("PyNvVideoCodec")
    except Exception as exc:  # noqa: BLE001 - its import raises bare Exceptions for driver issues
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"PyNvVideoCodec failed to import: {type(exc).__name__}: {first_line}"
    return None


@dataclass(frozen=True)
class DecoderDecision:
    """Which decoder a camera uses and, when NVDEC was wanted but is not used, why."""

    requested: DecoderChoice
    decoder: DecoderName
    fallback_reason: str | None = None

    @property
    def log_level(self) -> int | None:
        """How loudly to report it: a fallback the user asked to avoid is a warning."""
        if self.fallback_reason is None:
            return None
        return logging.WARNING if self.requested == "nvdec" else logging.INFO


def decide_decoder(
    requested: DecoderChoice,
    gpu: int,
    probe: Callable[[int], str | None] = nvdec_unavailable_reason,
) -> DecoderDecision:
    """Take "cpu" as asked; "auto" and "nvdec" get NVDEC when ``probe`` finds no reason
    against it, else the CPU (a camera must decode somewhere, so "nvdec" never fails)."""
    if requested not in DECODER_CHOICES:
        raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {requested!r}")
    if requested == "cpu":
        return DecoderDecision(requested, "cpu")
    reason = probe(gpu)
    if reason is None:
        return DecoderDecision(requested, "nvdec")
    return DecoderDecision(requested, "cpu", reason)


# -- colour conversion ---------------------------------------------------------------------


class ColorMatrix(StrEnum):
    """The Y'CbCr -> R'G'B' matrix a stream was encoded with (its luma weights Kr, Kb)."""

    BT601 = "bt601"
    BT709 = "bt709"
    BT2020 = "bt2020"


_LUMA_WEIGHTS = {
    ColorMatrix.BT601: (0.299, 0.114),
    ColorMatrix.BT709: (0.2126, 0.0722),
    ColorMatrix.BT2020: (0.2627, 0.0593),
}
# FFmpeg's AVColorSpace values (av.codec.context: ``colorspace``)
_AVCOL_SPC = {
    1: ColorMatrix.BT709,
    5: ColorMatrix.BT601,  # BT470BG
    6: ColorMatrix.BT601,  # SMPTE170M
    7: ColorMatrix.BT709,  # SMPTE240M: within a code value of BT.709
    9: ColorMatrix.BT2020,  # BT2020_NCL
    10: ColorMatrix.BT2020,  # BT2020_CL
}
_AVCOL_RANGE_JPEG = 2


@dataclass(frozen=True)
class ColorSpec:
    """How to read a stream's samples: matrix and range (limited 16-235 unless full)."""

    matrix: ColorMatrix = ColorMatrix.BT709
    full_range: bool = False

    @classmethod
    def of_stream(cls, colorspace: int, color_range: int, height: int) -> ColorSpec:
        """From FFmpeg's tags; an untagged stream is BT.709 when HD, BT.601 below 720 lines
        (what encoders of each size assume)."""
        default = ColorMatrix.BT709 if height >= _HD_HEIGHT else ColorMatrix.BT601
        return cls(_AVCOL_SPC.get(colorspace, default), color_range == _AVCOL_RANGE_JPEG)


NVDEC_RGB_SPECS = frozenset({ColorSpec(ColorMatrix.BT709), ColorSpec(ColorMatrix.BT601)})
"""Colour specs whose conversion PyNvVideoCodec does itself, inside ``Decode``: limited-range
BT.709 and BT.601, the matrices its converter takes from the stream's tags
(``benchmarks/gpu/nvdec_ceiling.py`` compares it with :class:`BgrConverter`: within one code
value on the H200, it truncates where the converter rounds). A stream tagged with one of them
is decoded straight to RGB, and a frame then costs one tensor operation (the flip to BGR)
instead of the converter's eight torch calls, each of which lets go of the GIL and waits to
take it back while every other capture thread wants it (one process on the H200: 2,677
against 1,366 frames/s); untagged, full-range and BT.2020 streams go through
:class:`BgrConverter`."""


class BgrConverter:
    """Y'CbCr planes -> ``(H, W, 3)`` uint8 BGR with one stream's colour spec, on one device.

    Built once per stream: its coefficients live on the device, and a frame then costs five
    tensor operations. Each is a kernel launch made under the GIL by every camera thread for
    every frame, so their number, not the GPU's arithmetic, bounds a worker's frame rate.
    """

    def __init__(self, spec: ColorSpec, device: str | torch.device = "cpu") -> None:
        import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

        kr, kb = _LUMA_WEIGHTS[spec.matrix]
        kg = 1.0 - kr - kb
        y_offset, y_gain, c_gain = (
            (0.0, 1.0, 1.0) if spec.full_range else (16.0, 255 / 219, 255 / 224)
        )
        # per output channel B, G, R: the weight of Cb and of Cr, and one bias holding the
        # luma and chroma offsets plus 0.5, since the final cast truncates (so this rounds)
        cb = (2 * (1 - kb), -2 * kb * (1 - kb) / kg, 0.0)
        cr = (0.0, -2 * kr * (1 - kr) / kg, 2 * (1 - kr))
        bias = [
            0.5 - y_offset * y_gain - 128.0 * c_gain * (b + r) for b, r in zip(cb, cr, strict=True)
        ]
        self.spec = spec
        self._y_gain = y_gain
        self._cb, self._cr, self._bias = (
            torch.tensor(values, dtype=torch.float32, device=device)
            for values in ([c * c_gain for c in cb], [c * c_gain for c in cr], bias)
        )

    def __call__(self, y: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """``y`` ``(H, W)``, ``uv`` ``(ceil(H/k), ceil(W/k), 2)`` interleaved Cb, Cr (k = 2 for
        4:2:0, 1 for 4:4:4), both uint8, or both uint16 with the sample in the high bits."""
        import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

        if y.ndim != 2 or uv.ndim != 3 or uv.shape[-1] != 2 or y.dtype != uv.dtype:
            raise ValueError(
                f"expected luma (H, W) and chroma (h, w, 2) of one dtype, got {tuple(y.shape)} "
                f"{y.dtype} and {tuple(uv.shape)} {uv.dtype}"
            )
        if y.dtype == torch.uint16:  # P016/YUV444_16Bit: to the 8-bit scale
            y, uv = y.to(torch.float32).mul_(1 / 256), uv.to(torch.float32).mul_(1 / 256)
        elif y.dtype != torch.uint8:
            raise ValueError(f"samples must be uint8 or uint16, got {y.dtype}")
        chroma = torch.addcmul(self._bias, uv[..., 0:1], self._cb).addcmul_(uv[..., 1:2], self._cr)
        return self._add_luma(chroma, y).clamp_(0, 255).to(torch.uint8)

    def _add_luma(self, chroma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each chroma sample repeated over the luma block it covers, plus the scaled luma:
        one broadcast addition when the blocks tile the frame exactly."""
        import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

        height, width = y.shape
        rows, cols = chroma.shape[0], chroma.shape[1]
        fy, fx = -(-height // rows), -(-width // cols)
        if (rows * fy, cols * fx) == (height, width):
            blocks = chroma[:, None, :, None, :]
            luma = y.view(rows, fy, cols, fx, 1)
            return torch.add(blocks, luma, alpha=self._y_gain).view(height, width, 3)
        # odd sizes: the last chroma row/column covers half a block
        upsampled = chroma[:, None, :, None, :].expand(rows, fy, cols, fx, 3)
        upsampled = upsampled.reshape(rows * fy, cols * fx, 3)[:height, :width]
        return torch.add(upsampled, y[..., None], alpha=self._y_gain)


def nv12_to_bgr(
    y_plane: torch.Tensor,
    uv_plane: torch.Tensor,
    matrix: ColorMatrix = ColorMatrix.BT709,
    *,
    full_range: bool = False,
) -> torch.Tensor:
    """NV12 (or P016) planes -> ``(H, W, 3)`` uint8 BGR on the planes' device.

    Args:
        y_plane: ``(H, W)`` luma, uint8, or uint16 with the sample in the high bits (P016).
        uv_plane: ``(ceil(H/2), ceil(W/2), 2)`` interleaved Cb, Cr of the same dtype.
        matrix: the stream's colour matrix.
        full_range: samples use 0-255 instead of the limited 16-235/16-240.

    Each chroma sample covers its 2x2 block (as OpenCV's and NVIDIA's converters do). For a
    stream of frames build one :class:`BgrConverter` instead.
    """
    return BgrConverter(ColorSpec(matrix, full_range), y_plane.device)(y_plane, uv_plane)


# -- decoding ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Picture:
    """One decoded frame: BGR pixels plus where it sits in the stream."""

    pixels: Pixels = field(repr=False)
    pts: int | None
    """In the stream's time base, as the demuxer stamped the packet."""
    time: float | None
    """``pts`` in seconds."""
    key_frame: bool
    ready: torch.cuda.Event | None = field(default=None, repr=False)
    """Recorded on the decoder's CUDA stream once ``pixels`` are written (None: they already
    are, e.g. host pixels). Wait for it before reading ``pixels`` on another stream or the host
    (:func:`order_after`)."""


def order_after(pixels: torch.Tensor, ready: torch.cuda.Event) -> None:
    """Make the calling thread's current CUDA stream wait, on the GPU, for the decoder's work
    on ``pixels``, and keep their memory from being reused before that stream is done."""
    import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

    stream = torch.cuda.current_stream(pixels.device)
    stream.wait_event(ready)
    pixels.record_stream(stream)


class AnnexB:
    """One stream's packets as the Annex B byte stream NVDEC's parser reads.

    MP4/MKV carry H.264/HEVC length-prefixed with the parameter sets in the header
    (``avcC``/``hvcC``); FFmpeg's ``*_mp4toannexb`` filter rewrites that and repeats the
    parameter sets before key frames. Sources already in Annex B (RTSP, MPEG-TS) pass through,
    and whatever parameter sets they announced out of band (SDP) go before the first packet of
    each pass, since a camera need not repeat them in band.
    """

    def __init__(self, stream: av.VideoStream) -> None:
        self._stream = stream
        extradata = stream.codec_context.extradata or b""
        self._prefix = extradata if extradata.startswith(_ANNEXB_START) else b""
        self._filter_name = f"{stream.codec_context.name}_mp4toannexb"
        self._bsf = av.BitStreamFilterContext(self._filter_name, stream)
        self._first = True

    def restart(self) -> None:
        """A new pass over the source (after a seek): the filter and the prefix start over."""
        self._bsf = av.BitStreamFilterContext(self._filter_name, self._stream)
        self._first = True

    def __call__(self, packet: VideoPacket) -> list[tuple[npt.NDArray[np.uint8], int | None]]:
        """(payload, pts) for each output packet of ``packet``."""
        out: list[tuple[npt.NDArray[np.uint8], int | None]] = []
        for filtered in self._bsf.filter(packet):
            payload = np.frombuffer(memoryview(filtered), dtype=np.uint8)
            if self._first and self._prefix:
                payload = np.concatenate((np.frombuffer(self._prefix, dtype=np.uint8), payload))
            self._first = False
            out.append((payload, filtered.pts))
        return out


class NvdecDecoder:
    """Decodes one PyAV video stream's packets on NVDEC into BGR CUDA tensors.

    Owns a CUDA stream: NVDEC writes its output surface on it and the colour conversion runs
    on it. The host does not wait for it: the pictures of one packet share a CUDA event
    recorded after their conversion (:attr:`Picture.ready`), which a consumer waits for on
    its own stream (:func:`order_after`; :meth:`CameraStream.get` does it). The next
    :meth:`decode` waits on the host only if the GPU has not yet reached that event, so that
    NVDEC never overwrites a surface still being read (normally it has, and that costs no
    wait and no GIL hand-over).

    Every capture thread runs this per packet under the GIL, so the work per picture is kept
    to a few Python calls: NVDEC converts tagged BT.601/709 streams to RGB itself
    (:data:`NVDEC_RGB_SPECS`), :meth:`streaming` keeps the decoder's stream current for a whole
    session instead of switching per packet, the surface is imported through DLPack with the
    stream already known, and :meth:`restart` (a looping file) keeps the NVDEC session: a new
    one costs ~50 ms of GIL-holding setup per pass.

    Streams without B-frames (what cameras send) decode in NVDEC's low-latency mode. When the
    stream also signals that it never reorders (``max_num_reorder_frames`` 0, as x264 writes
    it), each picture comes out of the :meth:`decode` that submitted it; with the native mode
    the 1080p B-frame clip's pictures left 3 to 6 packets (100-200 ms at 30 FPS) after their
    own. A stream whose SPS does not say so is still held until the decoded picture buffer
    bumps it (six pictures for ``car-detection.mp4``; ``benchmarks/gpu/nvdec_ceiling.py``
    measures it as ``worker_decoder_lag``).

    Raises:
        NvdecError: the codec, the GPU or the driver cannot decode this stream.
    """

    def __init__(self, stream: av.VideoStream, gpu: int) -> None:
        codec_name = stream.codec_context.name
        if codec_name not in _NV_CODECS:
            raise NvdecError(
                f"the NVDEC path decodes {', '.join(sorted(_NV_CODECS))}; this stream is "
                f"{codec_name}"
            )
        reason = nvdec_unavailable_reason(gpu)
        if reason is not None:
            raise NvdecError(reason)
        import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

        self._torch = torch
        self._nvc = importlib.import_module("PyNvVideoCodec")
        self._codec = getattr(self._nvc.cudaVideoCodec, _NV_CODECS[codec_name])
        self._gpu = gpu
        context = stream.codec_context
        self._tick = float(stream.time_base) if stream.time_base else None
        """Seconds per pts unit (a float: Fraction arithmetic per frame costs microseconds)."""
        self.low_latency = not context.has_b_frames
        """Each packet's picture is output at once (IPPP streams; B-frames need reordering)."""
        self._end_of_picture = self._nvc.VideoPacketFlag.ENDOFPICTURE if self.low_latency else None
        color = ColorSpec.of_stream(context.colorspace, context.color_range, context.height)
        self.native_rgb = context.colorspace in _AVCOL_SPC and color in NVDEC_RGB_SPECS
        """NVDEC converts to RGB itself (see :data:`NVDEC_RGB_SPECS`); else BgrConverter."""
        self._annexb = AnnexB(stream)
        self._key_pts: deque[int] = deque(maxlen=_KEY_PTS_KEPT)
        self._timed = False  # packets carry pts (a raw bitstream's do not)
        self._last_ready: torch.cuda.Event | None = None
        self._flushed = False  # the last packet was the end of stream
        self._on_stream: Callable[[], AbstractContextManager[Any]] = self._switch_stream
        try:
            device = torch.device("cuda", gpu)
            self._cuda_stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            self._stream_id: int = self._cuda_stream.cuda_stream
            self._convert = BgrConverter(color, device)
            self._decoder: Any = self._create()
        except Exception as exc:
            raise NvdecError(f"NVDEC setup on GPU {gpu} failed: {exc}") from exc
        log.debug(
            "nvdec decoder ready gpu=%d codec=%s color=%s native_rgb=%s low_latency=%s",
            gpu, codec_name, color, self.native_rgb, self.low_latency,
        )  # fmt: skip

    def _create(self) -> Any:
        nvc = self._nvc
        color, latency = nvc.OutputColorType, nvc.DisplayDecodeLatencyType
        return nvc.CreateDecoder(
            gpuid=self._gpu,
            codec=self._codec,
            cudastream=self._stream_id,
            usedevicememory=True,
            outputColorType=color.RGB if self.native_rgb else color.NATIVE,
            latency=latency.LOW if self.low_latency else latency.NATIVE,
        )

    def decode(self, packet: VideoPacket) -> list[Picture]:
        """The frames this packet completes, in display order; an empty packet (the
        demuxer's end of stream) flushes the frames still held for reordering."""
        if packet.size == 0:
            return self._submit(None, None)
        if packet.pts is not None:
            self._timed = True
            if packet.is_keyframe:
                self._key_pts.append(packet.pts)
        pictures: list[Picture] = []
        for payload, pts in self._annexb(packet):
            pictures.extend(self._submit(payload, pts))
        return pictures

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Keep the decoder's CUDA stream current on the calling thread while it decodes a
        whole session (a capture thread), so that :meth:`decode` need not switch to it and
        back per packet (tens of µs of Python each time)."""
        with self._torch.cuda.stream(self._cuda_stream):
            self._on_stream = contextlib.nullcontext
            try:
                yield
            finally:
                self._on_stream = self._switch_stream

    def _switch_stream(self) -> AbstractContextManager[Any]:
        return self._torch.cuda.stream(self._cuda_stream)

    def restart(self) -> None:
        """Start a new pass (after a seek): Annex B state anew, the NVDEC session kept (it
        decodes on after an end-of-stream flush; a new session costs far more)."""
        if not self._flushed:  # a seek before the end: what NVDEC still holds is dropped
            self._submit(None, None)
        self._annexb.restart()
        self._key_pts.clear()

    def close(self) -> None:
        """Release the NVDEC session (its surfaces) now rather than at garbage collection."""
        self._surface_free()
        self._decoder = None

    def _submit(self, payload: npt.NDArray[np.uint8] | None, pts: int | None) -> list[Picture]:
        packet = self._nvc.PacketData()
        if payload is not None:  # else an empty packet: NVDEC's end of stream
            packet.bsl_data = payload.ctypes.data
            packet.bsl = payload.size
            packet.pts = pts if pts is not None else 0
            if self._end_of_picture is not None:
                packet.decode_flag = self._end_of_picture
        self._flushed = payload is None
        self._surface_free()
        try:
            with self._on_stream():
                frames = self._decoder.Decode(packet)
                if not frames:
                    return []
                ready = self._torch.cuda.Event()  # type: ignore[no-untyped-call]
                pictures = [self._picture(frame, ready) for frame in frames]
                ready.record(self._cuda_stream)
        except NvdecError:
            raise
        except Exception as exc:
            raise NvdecError(f"NVDEC decode failed: {exc}") from exc
        self._last_ready = ready
        return pictures

    def _surface_free(self) -> None:
        """Wait until the GPU has converted the last packet's pictures: NVDEC may reuse their
        surfaces from the next ``Decode`` on. A query first, since waiting hands the GIL over
        even when there is nothing to wait for."""
        ready, self._last_ready = self._last_ready, None
        if ready is not None and not ready.query():  # type: ignore[no-untyped-call]
            ready.synchronize()

    def _picture(self, frame: Any, ready: torch.cuda.Event) -> Picture:
        pts = int(frame.timestamp) if self._timed else None
        # the capsule, not the frame: torch would look the current stream up again per call
        surface = self._torch.utils.dlpack.from_dlpack(frame.__dlpack__(stream=self._stream_id))
        if self.native_rgb:
            image = rgb_to_bgr(surface)
        else:
            image = surface_to_bgr(surface, _format_name(frame), self._convert)
        return Picture(
            pixels=image,
            pts=pts,
            time=pts * self._tick if pts is not None and self._tick else None,
            key_frame=pts is not None and pts in self._key_pts,
            ready=ready,
        )


def _format_name(frame: Any) -> str:
    fmt = frame.format
    return str(getattr(fmt, "name", fmt)).rsplit(".", 1)[-1]


def rgb_to_bgr(surface: torch.Tensor) -> torch.Tensor:
    """PyNvVideoCodec's interleaved ``(H, W, 3)`` RGB output -> a new BGR tensor: one copy,
    which also frees the decoder's output buffer for the next picture."""
    if surface.ndim != 3 or surface.shape[-1] != 3:
        raise NvdecError(f"NVDEC RGB output must be (H, W, 3), got {tuple(surface.shape)}")
    return surface.flip(-1)


def surface_to_bgr(surface: torch.Tensor, pixel_format: str, convert: BgrConverter) -> torch.Tensor:
    """An NVDEC output surface as PyNvVideoCodec exports it through DLPack -> BGR.

    NV12/P016 are ``(H * 3/2, W)`` (luma rows, then interleaved chroma rows); YUV444 and
    YUV444_16Bit are ``(3H, W)`` (three planes). 4:2:2 surfaces (Blackwell) are refused.
    """
    import torch  # optional (kubevision[gpu]): loaded only where GPUs are used

    rows, width = surface.shape
    if pixel_format in ("NV12", "P016"):
        height = rows * 2 // 3
        return convert(surface[:height], surface[height:].reshape(rows - height, width // 2, 2))
    if pixel_format in ("YUV444", "YUV444_16Bit"):
        height = rows // 3
        uv = torch.stack((surface[height : 2 * height], surface[2 * height :]), dim=-1)
        return convert(surface[:height], uv)
    raise NvdecError(f"NVDEC surface format {pixel_format} is not supported (4:2:0 or 4:4:4)")


def read_nvdec(
    url: str,
    gpu: int = 0,
    *,
    options: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Iterator[Picture]:
    """Every frame of ``url`` (a file path or an FFmpeg URL such as ``rtsp://``) decoded on
    GPU ``gpu``, as BGR CUDA tensors complete when yielded; ``options`` and ``timeout`` go to
    ``av.open``.

    Raises:
        NvdecError: NVDEC cannot decode it (see :func:`nvdec_unavailable_reason`).
    """
    with av.open(url, options=dict(options or {}), timeout=timeout) as container:
        if not container.streams.video:
            raise NvdecError(f"{url} has no video stream")
        stream = container.streams.video[0]
        decoder = NvdecDecoder(stream, gpu)
        try:
            for packet in container.demux(stream):
                for picture in decoder.decode(packet):
                    if picture.ready is not None:
                        picture.ready.synchronize()
                    yield picture
        finally:
            decoder.close()
