"""NVDEC support without a GPU: the colour conversion (on CPU tensors, against OpenCV and the
published matrices), the Annex B packets NVDEC's parser gets (decoded here by FFmpeg from a
fresh context, as the parser would see them), the availability probe and the decoder choice.
The tests at the end decode on a real NVDEC and skip, saying why, where there is none."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch

from kubevision.worker import nvdec
from kubevision.worker.capture import CaptureOptions
from kubevision.worker.nvdec import (
    AnnexB,
    BgrConverter,
    ColorMatrix,
    ColorSpec,
    DecoderChoice,
    NvdecDecoder,
    NvdecError,
    decide_decoder,
    nv12_to_bgr,
    nvdec_unavailable_reason,
    order_after,
    read_nvdec,
    surface_to_bgr,
)
from tests import hardware
from tests.assets import require

BOTTLE_FRAMES = 1189  # bottle-detection.mp4: 640x360 H.264 High with B-frames, untagged colour
CAR_FRAMES = 377  # car-detection.mp4: 768x432 H.264 Baseline (no B-frames), BT.601

# (Y gain, Cb->B, Cb->G, Cr->G, Cr->R) as the standards publish them, for 8-bit samples
PUBLISHED = {
    (ColorMatrix.BT601, False): (1.164383, 2.017232, -0.391762, -0.812968, 1.596027),
    (ColorMatrix.BT709, False): (1.164383, 2.112402, -0.213249, -0.532909, 1.792741),
    (ColorMatrix.BT709, True): (1.0, 1.8556, -0.187324, -0.468124, 1.5748),
    (ColorMatrix.BT2020, False): (1.164383, 2.141772, -0.187326, -0.650424, 1.678674),
}


def nv12_frame(index: int) -> npt.NDArray[np.uint8]:
    """Frame ``index`` of the bottle video as FFmpeg decodes it, laid out as NV12 (H*3/2, W)."""
    with av.open(str(require("videos/bottle-detection.mp4"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return np.asarray(frame.reformat(format="nv12").to_ndarray(), np.uint8)
    raise AssertionError(f"the video has no frame {index}")


def planes(nv12: npt.NDArray[np.uint8]) -> tuple[torch.Tensor, torch.Tensor]:
    height = nv12.shape[0] * 2 // 3
    y = torch.from_numpy(nv12[:height].copy())
    uv = torch.from_numpy(nv12[height:].copy()).reshape(height // 2, -1, 2)
    return y, uv


def reference_bgr(
    nv12: npt.NDArray[np.uint8], coefficients: tuple[float, ...], full_range: bool
) -> npt.NDArray[np.uint8]:
    """Float64 conversion with the published coefficients, chroma repeated over 2x2 blocks."""
    gain, cb_b, cb_g, cr_g, cr_r = coefficients
    height = nv12.shape[0] * 2 // 3
    y = nv12[:height].astype(np.float64) - (0 if full_range else 16)
    uv = nv12[height:].reshape(height // 2, -1, 2).astype(np.float64) - 128
    uv = uv.repeat(2, axis=0).repeat(2, axis=1)
    cb, cr = uv[..., 0], uv[..., 1]
    bgr = np.stack((gain * y + cb_b * cb, gain * y + cb_g * cb + cr_g * cr, gain * y + cr_r * cr))
    return np.clip(np.rint(bgr.transpose(1, 2, 0)), 0, 255).astype(np.uint8)


def max_diff(a: npt.ArrayLike, b: npt.ArrayLike) -> int:
    first, second = np.asarray(a, np.int16), np.asarray(b, np.int16)
    assert first.shape == second.shape
    return int(np.abs(first - second).max())


# -- colour conversion ---------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 600, BOTTLE_FRAMES - 1])
def test_nv12_to_bgr_matches_opencv_on_real_frames(index: int) -> None:
    """Within 2 code values over the legal luma range. Below black (Y < 16, the footroom a
    few dark pixels use) OpenCV clamps Y to 16 before adding chroma, while the standard's
    formula (ours, NVIDIA's, swscale's) keeps it, so there the chroma term may differ by 3."""
    nv12 = nv12_frame(index)
    y, uv = planes(nv12)
    ours = nv12_to_bgr(y, uv, ColorMatrix.BT601).numpy()
    assert ours.shape == (360, 640, 3)
    assert ours.dtype == np.uint8
    opencv = cv2.cvtColor(nv12, cv2.COLOR_YUV2BGR_NV12)
    legal = y.numpy() >= 16
    assert max_diff(ours[legal], opencv[legal]) <= 2
    assert max_diff(ours, opencv) <= 3
    assert legal.mean() > 0.99


@pytest.mark.parametrize(("matrix", "full_range"), list(PUBLISHED))
def test_nv12_to_bgr_follows_the_published_matrices(matrix: ColorMatrix, full_range: bool) -> None:
    nv12 = nv12_frame(300)
    y, uv = planes(nv12)
    ours = nv12_to_bgr(y, uv, matrix, full_range=full_range).numpy()
    assert max_diff(ours, reference_bgr(nv12, PUBLISHED[matrix, full_range], full_range)) <= 1


def test_16_bit_surfaces_read_like_8_bit_ones() -> None:
    """P016 keeps the sample in the high bits: 8-bit content shifted up converts the same."""
    y, uv = planes(nv12_frame(10))
    y16, uv16 = ((p.to(torch.int32) << 8).to(torch.uint16) for p in (y, uv))
    assert torch.equal(nv12_to_bgr(y16, uv16), nv12_to_bgr(y, uv))


def test_surface_layouts_from_nvdec_convert_like_the_planes() -> None:
    """NV12 surfaces arrive as one (H*3/2, W) tensor, YUV444 as (3H, W); a 4:2:0 frame whose
    chroma is repeated to 4:4:4 must give the very same BGR through either layout."""
    nv12 = nv12_frame(42)
    y, uv = planes(nv12)
    convert = BgrConverter(ColorSpec(ColorMatrix.BT709))
    expected = nv12_to_bgr(y, uv, ColorMatrix.BT709)
    assert torch.equal(surface_to_bgr(torch.from_numpy(nv12), "NV12", convert), expected)
    u, v = (uv[..., i].repeat_interleave(2, 0).repeat_interleave(2, 1) for i in (0, 1))
    yuv444 = torch.cat((y, u, v))
    assert torch.equal(surface_to_bgr(yuv444, "YUV444", convert), expected)


def test_odd_sizes_cover_the_last_row_and_column() -> None:
    y = torch.full((5, 7), 120, dtype=torch.uint8)
    uv = torch.full((3, 4, 2), 128, dtype=torch.uint8)
    bgr = nv12_to_bgr(y, uv)
    assert bgr.shape == (5, 7, 3)
    assert torch.unique(bgr).tolist() == [121]  # grey: (120 - 16) * 255/219 = 121.1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: nv12_to_bgr(torch.zeros(4, 4, dtype=torch.uint8), torch.zeros(2, 2)), "one dtype"),
        (lambda: nv12_to_bgr(torch.zeros(4, 4), torch.zeros(2, 2, 2)), "uint8 or uint16"),
        (
            lambda: surface_to_bgr(
                torch.zeros(8, 4, dtype=torch.uint8), "NV16", BgrConverter(ColorSpec())
            ),
            "NV16 is not supported",
        ),
    ],
)
def test_bad_inputs_say_what_is_expected(call: Callable[[], object], error: str) -> None:
    with pytest.raises((ValueError, NvdecError), match=error):
        call()


@pytest.mark.parametrize(
    ("colorspace", "color_range", "height", "expected"),
    [
        (1, 1, 360, ColorSpec(ColorMatrix.BT709)),  # tagged BT.709 wins over the size
        (6, 0, 1080, ColorSpec(ColorMatrix.BT601)),  # SMPTE 170M
        (5, 2, 480, ColorSpec(ColorMatrix.BT601, full_range=True)),  # BT.470BG, JPEG range
        (9, 0, 2160, ColorSpec(ColorMatrix.BT2020)),
        (2, 0, 1080, ColorSpec(ColorMatrix.BT709)),  # untagged HD
        (2, 0, 719, ColorSpec(ColorMatrix.BT601)),  # untagged SD
    ],
)
def test_stream_tags_choose_the_matrix(
    colorspace: int, color_range: int, height: int, expected: ColorSpec
) -> None:
    assert ColorSpec.of_stream(colorspace, color_range, height) == expected


# -- Annex B packets -----------------------------------------------------------------------


def mpegts_copy(source: Path, destination: Path) -> Path:
    """The same H.264 stream in MPEG-TS: Annex B in band, as RTSP delivers it."""
    with av.open(str(source)) as src, av.open(str(destination), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return destination


@pytest.mark.parametrize("container", ["mp4", "mpegts"])
def test_annexb_packets_decode_without_the_container_header(container: str, tmp_path: Path) -> None:
    """What NVDEC's parser gets: start codes, parameter sets in band, the original pts. A
    decoder given nothing else (no extradata) must produce exactly FFmpeg's own frames."""
    source = require("videos/car-detection.mp4")
    path = source if container == "mp4" else mpegts_copy(source, tmp_path / "car.ts")
    with av.open(str(path)) as demuxer:
        stream = demuxer.streams.video[0]
        expected = [(f.pts, f.to_ndarray(format="gray")) for f in demuxer.decode(stream)]
        demuxer.seek(0)
        annexb = AnnexB(stream)
        bare = av.CodecContext.create("h264", "r")
        got = []
        for packet in demuxer.demux(stream):
            frames = bare.decode(None) if packet.size == 0 else []
            for payload, pts in annexb(packet) if packet.size else []:
                assert payload[:4].tobytes() == b"\x00\x00\x00\x01" or payload[:3].tobytes() == (
                    b"\x00\x00\x01"
                )
                fed = av.Packet(payload.tobytes())
                fed.pts = pts
                frames += bare.decode(fed)
            got += [(f.pts, f.to_ndarray(format="gray")) for f in frames]
    assert len(got) == len(expected) == 377
    assert [pts for pts, _ in got] == [pts for pts, _ in expected]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected, strict=True))


def test_annexb_restart_sends_the_out_of_band_parameter_sets_again(tmp_path: Path) -> None:
    path = mpegts_copy(require("videos/car-detection.mp4"), tmp_path / "car.ts")
    with av.open(str(path)) as demuxer:
        stream = demuxer.streams.video[0]
        extradata = stream.codec_context.extradata
        assert extradata is not None
        annexb = AnnexB(stream)
        packets = demuxer.demux(stream)
        first = annexb(next(packets))[0][0].tobytes()
        second = annexb(next(packets))[0][0].tobytes()
        annexb.restart()
        demuxer.seek(0)
        again = annexb(next(demuxer.demux(stream)))[0][0].tobytes()
    assert first.startswith(extradata)
    assert not second.startswith(extradata)
    assert again == first


# -- availability and choice ---------------------------------------------------------------


def test_the_probe_gives_a_reason_instead_of_raising() -> None:
    assert nvdec_unavailable_reason(-1) == "GPU index must be >= 0, got -1"
    for gpu in (0, 10_000):
        reason = nvdec_unavailable_reason(gpu)
        assert reason is None or reason.strip(), "None, or a reason a person can act on"
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        assert nvdec_unavailable_reason(0) == (
            "the Python package PyNvVideoCodec is not installed (pip install 'kubevision[nvdec]')"
        )


def libcuda_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (lambda: nvdec._module_reason("numpy", "pip install numpy"), None),
        (
            lambda: nvdec._module_reason("kubevision_no_such_module", "pip install it"),
            "the Python package kubevision_no_such_module is not installed (pip install it)",
        ),
        (lambda: nvdec._library_reason("libc.so.6"), None),
        (
            lambda: nvdec._library_reason("libkubevision-missing.so.1"),
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video",
        ),
        pytest.param(
            lambda: nvdec._cuda_device_reason(0),
            "no NVIDIA driver: libcuda.so.1 cannot be loaded",
            marks=pytest.mark.skipif(
                libcuda_present(), reason=hardware.reason("gpu", "this machine has a driver")
            ),
        ),
    ],
)
def test_each_probe_step_names_its_cause(
    check: Callable[[], str | None], expected: str | None
) -> None:
    reason = check()
    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert expected in reason


def probe_answering(reason: str | None) -> Callable[[int], str | None]:
    return lambda gpu: reason


def probe_never_called(gpu: int) -> str | None:
    raise AssertionError("the cpu decoder needs no probe")


@pytest.mark.parametrize(
    ("requested", "probe", "decoder", "fallback", "level"),
    [
        ("cpu", probe_never_called, "cpu", None, None),
        ("auto", probe_answering(None), "nvdec", None, None),
        ("auto", probe_answering("no driver"), "cpu", "no driver", logging.INFO),
        ("nvdec", probe_answering(None), "nvdec", None, None),
        ("nvdec", probe_answering("no driver"), "cpu", "no driver", logging.WARNING),
    ],
)
def test_decoder_choice(
    requested: DecoderChoice,
    probe: Callable[[int], str | None],
    decoder: str,
    fallback: str | None,
    level: int | None,
) -> None:
    decision = decide_decoder(requested, 0, probe)
    assert (decision.decoder, decision.fallback_reason, decision.log_level) == (
        decoder,
        fallback,
        level,
    )


def test_decoder_choice_on_this_machine_follows_the_probe() -> None:
    reason = nvdec_unavailable_reason(0)
    decision = decide_decoder("auto", 0)
    assert decision.decoder == ("cpu" if reason else "nvdec")
    assert decision.fallback_reason == reason


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"decoder": "gpu"}, "decoder must be one of"),
        ({"gpu": -1}, "gpu must be a device index >= 0"),
    ],
)
def test_unknown_decoder_settings_are_refused(options: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        CaptureOptions(**options)  # type: ignore[arg-type]


def test_decide_decoder_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="decoder must be one of"):
        decide_decoder("gpu", 0)  # type: ignore[arg-type]


# -- on a real NVDEC -----------------------------------------------------------------------


@pytest.fixture
def gpu() -> int:
    reason = nvdec_unavailable_reason(0)
    if reason is not None:
        hardware.skip_without("nvdec", f"NVDEC unavailable: {reason}")
    return 0


VIDEOS = [  # (video, frames, low-latency mode, NVDEC's own RGB conversion)
    pytest.param("videos/bottle-detection.mp4", BOTTLE_FRAMES, False, False, id="b-frames"),
    pytest.param("videos/car-detection.mp4", CAR_FRAMES, True, True, id="ippp"),
]
NVDEC_RGB_TOLERANCE = 2
"""Code values between PyNvVideoCodec's own conversion and BgrConverter (it rounds
differently); BgrConverter itself matches FFmpeg's NV12 converted on the CPU to 1."""


@pytest.mark.parametrize(("video", "frames", "low_latency", "native_rgb"), VIDEOS)
def test_nvdec_decodes_every_frame_like_ffmpeg(
    gpu: int, video: str, frames: int, low_latency: bool, native_rgb: bool
) -> None:
    """H.264 decoding is exact, so NVDEC's frames converted on the GPU must match FFmpeg's
    converted on the CPU to a code value (two where NVDEC converts, for a tagged stream);
    timestamps and order must be the same, in NVDEC's native (B-frames) and low-latency
    (IPPP) modes alike."""
    path = require(video)
    with av.open(str(path)) as container:
        expected = [
            (f.pts, np.asarray(f.reformat(format="nv12").to_ndarray(), np.uint8))
            for f in container.decode(video=0)
        ]
    count = 0
    for picture, (pts, nv12) in zip(read_nvdec(str(path), gpu), expected, strict=True):
        assert isinstance(picture.pixels, torch.Tensor)
        assert picture.pixels.device == torch.device("cuda", gpu)
        assert picture.pts == pts
        cpu = nv12_to_bgr(*planes(nv12), ColorMatrix.BT601).numpy()
        assert max_diff(picture.pixels.cpu().numpy(), cpu) <= (
            NVDEC_RGB_TOLERANCE if native_rgb else 1
        )
        count += 1
    assert count == frames


def packet_lags(decoder: NvdecDecoder, container: av.container.InputContainer) -> list[int]:
    """For each picture, how many packets after its own it came out of ``decode``."""
    stream = container.streams.video[0]
    submitted: dict[int | None, int] = {}
    lags = []
    for index, packet in enumerate(container.demux(stream)):
        if packet.size:
            submitted[packet.pts] = index
        lags += [index - submitted[picture.pts] for picture in decoder.decode(packet)]
    return lags


def encode_ippp(path: Path, frames: int = 60) -> Path:
    """A 320x240 H.264 IPPP clip from x264, which signals in the SPS that it never reorders
    (``max_num_reorder_frames`` 0), as camera encoders do; moving noise so frames differ."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as container:
        options = {"x264-params": "bframes=0:keyint=30"}
        stream = container.add_stream("libx264", rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        base = rng.integers(0, 256, (240, 640, 3), dtype=np.uint8)
        for i in range(frames):
            image = np.ascontiguousarray(base[:, i : i + 320])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(
    ("video", "frames", "low_latency"),
    [
        pytest.param("videos/bottle-detection.mp4", BOTTLE_FRAMES, False, id="b-frames"),
        pytest.param(None, 60, True, id="ippp"),
    ],
)
def test_a_stream_without_b_frames_is_not_held_back_for_reordering(
    gpu: int, video: str | None, frames: int, low_latency: bool, tmp_path: Path
) -> None:
    """Cameras send IPPP streams: NVDEC's low-latency mode hands each picture out of the
    ``decode`` that submitted it when the stream signals that it never reorders (measured on
    the H200: car-detection.mp4, whose SPS does not say so, is still held six pictures deep
    for the decoded picture buffer). B-frame streams keep NVDEC's reordering."""
    path = require(video) if video else encode_ippp(tmp_path / "ippp.mp4")
    with av.open(str(path)) as container:
        decoder = NvdecDecoder(container.streams.video[0], gpu)
        assert decoder.low_latency is low_latency
        lags = packet_lags(decoder, container)
        decoder.close()
    assert len(lags) == frames
    histogram = {lag: lags.count(lag) for lag in sorted(set(lags))}
    if low_latency:
        assert max(lags) == 0, f"pictures per packets late: {histogram}"
    else:
        assert max(lags) >= 1, f"a B-frame stream must be reordered: {histogram}"


def test_pictures_are_ready_after_their_event_without_a_host_wait(gpu: int) -> None:
    """The decoder does not synchronise per packet: a consumer stream that waits for
    ``Picture.ready`` (``order_after``) reads whole frames, here equal to the host-waited ones."""
    video = str(require("videos/car-detection.mp4"))
    expected = [torch.as_tensor(p.pixels).cpu() for p in read_nvdec(video, gpu)]
    consumer = torch.cuda.Stream(torch.device("cuda", gpu))
    copies = []
    with av.open(video) as container, torch.cuda.stream(consumer):
        stream = container.streams.video[0]
        decoder = NvdecDecoder(stream, gpu)
        for packet in container.demux(stream):
            for picture in decoder.decode(packet):
                assert isinstance(picture.pixels, torch.Tensor)
                assert picture.ready is not None
                order_after(picture.pixels, picture.ready)
                copies.append(picture.pixels.clone())
        decoder.close()
    consumer.synchronize()
    assert len(copies) == CAR_FRAMES
    assert all(torch.equal(a.cpu(), b) for a, b in zip(copies, expected, strict=True))
