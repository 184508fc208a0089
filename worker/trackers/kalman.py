"""Constant-velocity Kalman filter for boxes, batched over all tracks of a camera.

State per track: ``(cx, cy, a, h, vcx, vcy, va, vh)``, box centre, aspect ratio w/h and height
plus their velocities, measured as ``(cx, cy, a, h)``. Process and measurement noise scale with
the box height (the DeepSORT/ByteTrack parametrisation), so a 30 px and a 300 px person are
equally uncertain relative to their size.

The filter is the textbook one (the same as ``filterpy.kalman.KalmanFilter`` with these F, H,
Q and R; ``tests/unit/test_trackers.py`` checks the two agree), written over stacked arrays so
one predict or update costs a handful of numpy calls whatever the number of tracks, instead of
one Python object per track.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

STD_WEIGHT_POSITION = 1.0 / 20
"""Position noise per unit of box height (DeepSORT's value)."""
STD_WEIGHT_VELOCITY = 1.0 / 160
"""Velocity noise per unit of box height (DeepSORT's value)."""
CHI2_95_4DOF = 9.4877
"""95% quantile of chi-square with 4 degrees of freedom: Mahalanobis gate on (cx, cy, a, h)."""

F = np.eye(8) + np.eye(8, k=4)
"""Transition: position += velocity, one frame per step."""
H = np.eye(4, 8)
"""Measurement: the first four state components."""


def xyxy_to_xyah(xyxy: npt.NDArray[np.floating]) -> Array:
    """(N, 4) corner boxes -> (N, 4) centre, aspect ratio, height."""
    box = np.asarray(xyxy, np.float64)
    wh = box[:, 2:] - box[:, :2]
    return np.column_stack([box[:, :2] + wh / 2, wh[:, 0] / wh[:, 1], wh[:, 1]])


def xyah_to_xyxy(xyah: Array) -> Array:
    """(N, >=4) states or measurements -> (N, 4) corner boxes."""
    h = xyah[:, 3]
    half = np.column_stack([xyah[:, 2] * h, h]) / 2
    return np.column_stack([xyah[:, :2] - half, xyah[:, :2] + half])


def initial_covariance(measurements: Array) -> Array:
    """Initial (N, 8, 8) covariance: unknown velocity, position as uncertain as a measurement."""
    h = measurements[:, 3]
    pos, vel, one = 2 * STD_WEIGHT_POSITION * h, 10 * STD_WEIGHT_VELOCITY * h, np.ones_like(h)
    std = np.column_stack([pos, pos, 1e-2 * one, pos, vel, vel, 1e-5 * one, vel])
    return _diag(std**2)


def process_noise(mean: Array) -> Array:
    """Q for each track, (N, 8, 8), scaled by its current height."""
    h = mean[:, 3]
    pos, vel, one = STD_WEIGHT_POSITION * h, STD_WEIGHT_VELOCITY * h, np.ones_like(h)
    return _diag(np.column_stack([pos, pos, 1e-2 * one, pos, vel, vel, 1e-5 * one, vel]) ** 2)


def measurement_noise(mean: Array) -> Array:
    """R for each track, (N, 4, 4), scaled by its current height."""
    h = mean[:, 3]
    pos, one = STD_WEIGHT_POSITION * h, np.ones_like(h)
    return _diag(np.column_stack([pos, pos, 1e-1 * one, pos]) ** 2)


def initiate(measurements: Array) -> tuple[Array, Array]:
    """New tracks from (N, 4) xyah measurements: zero velocity, wide covariance."""
    mean = np.hstack([measurements, np.zeros_like(measurements)])
    return mean, initial_covariance(measurements)


def predict(mean: Array, cov: Array) -> tuple[Array, Array]:
    """One frame ahead for every track: x = F x, P = F P F^T + Q."""
    return mean @ F.T, F @ cov @ F.T + process_noise(mean)


def project(mean: Array, cov: Array) -> tuple[Array, Array]:
    """Expected measurement and its covariance S = H P H^T + R, per track."""
    return mean[:, :4], cov[:, :4, :4] + measurement_noise(mean)


def update(mean: Array, cov: Array, measurements: Array) -> tuple[Array, Array]:
    """Correct each track with its own (N, 4) measurement (rows paired with tracks)."""
    z_mean, s = project(mean, cov)
    # K = P H^T S^-1, solved rather than inverted; S is symmetric so K^T = S^-1 H P.
    gain = np.linalg.solve(s, cov[:, :4, :]).transpose(0, 2, 1)
    innovation = measurements - z_mean
    new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    new_cov = cov - gain @ s @ gain.transpose(0, 2, 1)
    return new_mean, new_cov


def mahalanobis_sq(mean: Array, cov: Array, measurements: Array) -> Array:
    """(T, N) squared Mahalanobis distances of N measurements to T tracks' projections."""
    z_mean, s = project(mean, cov)
    diff = measurements[None, :, :] - z_mean[:, None, :]
    distances: Array = np.einsum("tni,tij,tnj->tn", diff, np.linalg.inv(s), diff)
    return distances


def _diag(values: Array) -> Array:
    """(N, K) -> (N, K, K) batch of diagonal matrices."""
    out = np.zeros((*values.shape, values.shape[1]))
    idx = np.arange(values.shape[1])
    out[:, idx, idx] = values
    return out
