"""``Camera``: one video source the operator assigns to a Pipeline's workers."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field

from kubevision.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    NAME_PATTERN,
    ApiModel,
    Condition,
    SecretKeyNames,
    cel,
    no_password,
    validations,
)

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "file", "v4l2")
SamplingMode = Literal["all", "everyN", "motion", "adaptive", "keyframes"]


class CameraSource(ApiModel):
    """Where the video comes from and how to connect."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            no_password(
                "url",
                "spec.source.url must not carry a password: put the credentials in a Secret "
                "and name it in spec.source.credentialsSecretRef",
            ),
            cel(
                "!self.url.matches('(?i)[?&](password|passwd|pwd|pass)=')",
                "spec.source.url must not carry a password in its query: put the credentials in "
                "a Secret and name it in spec.source.credentialsSecretRef",
                field_path=".url",
            ),
            cel(
                "!self.url.matches(r'[\\x00-\\x20\\x7f]')",
                "spec.source.url must not contain spaces or control characters (percent-encode "
                "them): they could smuggle headers or options into the stream request",
                field_path=".url",
            ),
            cel(
                "!self.url.matches('^(file|v4l2):') || self.url.matches('^(file|v4l2):///')",
                "spec.source.url: file:// and v4l2:// sources take an absolute path "
                "(file:///videos/a.mp4, v4l2:///dev/video0)",
                field_path=".url",
            ),
            cel(
                "!has(self.transport) || self.url.startsWith('rtsp')",
                "spec.source.transport applies to rtsp:// and rtsps:// sources only",
                field_path=".transport",
            ),
        )
    }

    url: str = Field(
        max_length=2048,
        pattern=r"^(rtsp|rtsps|http|https|rtmp|rtmps|file|v4l2)://.+$",
    )
    """Stream URL: rtsp, rtsps, http(s), rtmp(s), file:// path or v4l2:///dev/videoN. Never put a
    password here; use credentialsSecretRef."""
    transport: Literal["tcp", "udp"] | None = None
    """RTSP transport (default tcp)."""
    credentials_secret_ref: SecretKeyNames | None = None
    """Secret with the stream's username and password; workers get them as env vars."""
    timeout_seconds: int = Field(default=10, ge=1, le=300)
    """Give up connecting or reading after this long, then reconnect with backoff."""

    @property
    def host(self) -> str:
        """The source's host (or device/file path), for people and printer columns."""
        parts = urlsplit(self.url)
        return parts.hostname or parts.path


class Sampling(ApiModel):
    """Which decoded frames go to inference."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.mode == 'everyN' ? has(self.everyN) : !has(self.everyN)",
                "spec.sampling.everyN is required with mode everyN and not allowed otherwise",
                field_path=".everyN",
            ),
            cel(
                "has(self.motionThreshold) ? self.mode in ['motion', 'adaptive'] : true",
                "spec.sampling.motionThreshold applies to modes motion and adaptive only",
                field_path=".motionThreshold",
            ),
            cel(
                "(has(self.minFps) || has(self.maxFps)) ? self.mode == 'adaptive' : true",
                "spec.sampling.minFps/maxFps apply to mode adaptive only",
                field_path=".mode",
            ),
            cel(
                "has(self.minFps) && has(self.maxFps) ? self.minFps <= self.maxFps : true",
                "spec.sampling.minFps must not exceed spec.sampling.maxFps",
                field_path=".minFps",
            ),
        )
    }

    mode: SamplingMode = "all"
    """all frames, every N-th, motion-triggered, adaptive (rate follows activity) or keyframes."""
    every_n: int | None = Field(default=None, ge=1, le=1000)
    """With mode everyN: process one frame in N."""
    motion_threshold: float | None = Field(default=None, gt=0, le=1)
    """With motion/adaptive: fraction of changed pixels that counts as activity."""
    min_fps: float | None = Field(default=None, gt=0, le=240)
    """With adaptive: the rate when nothing moves."""
    max_fps: float | None = Field(default=None, gt=0, le=240)
    """With adaptive: the rate under full activity."""


# [x, y] in normalised image coordinates (0..1, origin top-left). A pair rather than {x, y}:
# YAML 1.1 readers such as kubectl take a bare `y` key for the boolean true.
Point = Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=2, max_length=2)]


class Zone(ApiModel):
    """A named polygon for zone analytics (enter/leave, dwell)."""

    name: str = Field(max_length=63, pattern=NAME_PATTERN)
    """Name of the zone, unique within the Camera; zone events carry it."""
    points: list[Point] = Field(min_length=3, max_length=64)
    """Polygon vertices in order (3 to 64), each [x, y] in 0..1 with the origin top-left."""


class Line(ApiModel):
    """A named line for crossing counts; start to end defines the positive direction."""

    name: str = Field(max_length=63, pattern=NAME_PATTERN)
    """Name of the line, unique within the Camera; crossing events carry it."""
    start: Point
    """Start point as [x, y] in normalised image coordinates (0..1, origin top-left)."""
    end: Point
    """End point as [x, y] (0..1, origin top-left); start to end is the positive direction."""


class CameraSpec(ApiModel):
    """Desired state of a Camera."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "!has(self.zones) || self.zones.all(z, self.zones.exists_one(o, o.name == z.name))",
                "spec.zones names must be unique",
                field_path=".zones",
            ),
            cel(
                "!has(self.lines) || self.lines.all(l, self.lines.exists_one(o, o.name == l.name))",
                "spec.lines names must be unique",
                field_path=".lines",
            ),
        )
    }

    source: CameraSource
    fps: float = Field(default=30, gt=0, le=240)
    """Frame rate the source delivers; used to size workers."""
    sampling: Sampling = Field(default_factory=Sampling)
    site: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN)
    """Pins the camera to nodes labelled kubevision.io/site=<site> (edge locations)."""
    priority: int = Field(default=100, ge=0, le=1000)
    """Higher-priority cameras are kept at full quality longest when capacity is short."""
    zones: list[Zone] | None = Field(default=None, max_length=32)
    """Named polygons for zone analytics (enter/leave, dwell); names must be unique."""
    lines: list[Line] | None = Field(default=None, max_length=32)
    """Named lines for crossing counts; names must be unique."""
    paused: bool = False
    """A paused camera is not assigned to any worker."""

    @property
    def effective_fps(self) -> float:
        """Frames per second that reach inference after sampling (sizes the workers)."""
        s = self.sampling
        if s.mode == "everyN" and s.every_n:
            return self.fps / s.every_n
        if s.mode == "adaptive" and s.max_fps:
            return min(self.fps, s.max_fps)
        return self.fps


LAST_ERROR_MAX = 512
"""Longest ``lastError`` kept: FFmpeg messages are short, a hostile stream's must not be."""


class CameraAssignment(ApiModel):
    """Which worker of which Pipeline processes this camera, and its stream health there.

    Each Pipeline writes its own entry. The health is what the worker reports (its /metrics and
    /status), read on each autoscaling tick (metricsIntervalSeconds): written when connected or
    lastError change; observedFps, lastFrameTime and reconnects while down refreshed at most
    once a minute (few writes for a fleet).
    """

    pipeline: str
    """Name of the Pipeline, in this namespace, that selects the camera."""
    workload: str
    """Name of the worker StatefulSet (one per Pipeline group) that processes the camera."""
    shard: int = Field(ge=0)
    """Ordinal of the worker replica (pod) of that StatefulSet that processes the camera."""
    connected: bool | None = None
    """True while the worker receives frames; false while it cannot read the stream (see
    lastError); unset until the worker has reported the camera."""
    reconnects: int | None = Field(default=None, ge=0)
    """Reconnection attempts of this worker since it took the camera (counts every retry)."""
    last_error: str | None = Field(default=None, max_length=LAST_ERROR_MAX)
    """Why the worker cannot read the stream now (credentials redacted); unset while it streams."""
    observed_fps: float | None = Field(default=None, ge=0)
    """Frames per second the worker decodes from the source (refreshed at most once a minute)."""
    last_frame_time: dt.datetime | None = None
    """When the worker last received a frame (refreshed at most once a minute while streaming)."""
    last_update_time: dt.datetime | None = None
    """When the operator last wrote this entry's stream health."""


class CameraStatus(ApiModel):
    """Observed state of a Camera: assignments and stream health per Pipeline, conditions."""

    observed_generation: int | None = None
    """The .metadata.generation this status was last computed for."""
    source_host: str | None = None
    """Host of the source URL (never credentials)."""
    assignments: list[CameraAssignment] = Field(
        default_factory=list,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["pipeline"],
        },
    )
    """One entry per Pipeline that selects this camera, with the stream health its worker sees."""
    conditions: list[Condition] = Field(
        default_factory=list, json_schema_extra=CONDITIONS_SCHEMA_EXTRA
    )
    """Ready (a Pipeline's worker takes the camera) and Connected (True: every such worker gets
    frames; False: one cannot read the stream, see its lastError; Unknown: not reported yet)."""
