"""Constant-velocity Kalman filters for boxes, batched over all tracks of a camera.

Two parametrisations, each the one its tracker was published with:

* ``HeightScaled`` (DeepSORT, ByteTrack): state ``(cx, cy, a, h, vcx, vcy, va, vh)``, box
  centre, aspect ratio w/h and height plus velocities, measured as ``(cx, cy, a, h)``. Process
  and measurement noise scale with the box height, so a 30 px and a 300 px person are equally
  uncertain relative to their size.
* ``AreaRatio`` (SORT): state ``(cx, cy, s, r, vcx, vcy, vs)`` with ``s`` the area and ``r``
  the aspect ratio (which has no velocity), fixed noise.

Both are the textbook filter (``filterpy.kalman.KalmanFilter`` with their F, H, Q and R;
``tests/unit/test_trackers.py`` checks they agree step by step), written over stacked arrays so
one predict or update costs a handful of numpy calls whatever the number of tracks.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

STD_WEIGHT_POSITION = 1.0 / 20
"""Position noise per unit of box height (DeepSORT's value)."""
STD_WEIGHT_VELOCITY = 1.0 / 160
"""Velocity noise per unit of box height (DeepSORT's value)."""
CHI2_95_4DOF = 9.4877
"""95% quantile of chi-square with 4 degrees of freedom: Mahalanobis gate on (cx, cy, a, h)."""


class BoxFilter(Protocol):
    """A batched Kalman filter whose measurements are corner boxes."""

    def initiate(self, xyxy: npt.NDArray[np.floating]) -> tuple[Array, Array]:
        """New tracks from (N, 4) boxes: zero velocity, wide covariance."""
        ...

    def predict(self, mean: Array, cov: Array) -> tuple[Array, Array]:
        """Every track one frame ahead."""
        ...

    def update(
        self, mean: Array, cov: Array, xyxy: npt.NDArray[np.floating]
    ) -> tuple[Array, Array]:
        """Correct each track with its own box (rows paired)."""
        ...

    def boxes(self, mean: Array) -> Array:
        """(N, 4) corner boxes of the states (NaN where a state is no box)."""
        ...


def _diag(values: Array) -> Array:
    """(N, K) -> (N, K, K) batch of diagonal matrices."""
    out = np.zeros((*values.shape, values.shape[1]))
    idx = np.arange(values.shape[1])
    out[:, idx, idx] = values
    return out


def _transition(dim_x: int, dim_z: int, moving: int) -> tuple[Array, Array]:
    """F (the first ``moving`` measured components move by their velocity) and H."""
    f = np.eye(dim_x)
    f[np.arange(moving), dim_z + np.arange(moving)] = 1.0
    return f, np.eye(dim_z, dim_x)


def _correct(mean: Array, cov: Array, h: Array, r: Array, z: Array) -> tuple[Array, Array]:
    """The Kalman update for stacked tracks: K = P H^T S^-1, x += K y, P -= K S K^T."""
    s = h @ cov @ h.T + r
    # K = P H^T S^-1, solved rather than inverted; S is symmetric so K^T = S^-1 H P.
    gain = np.linalg.solve(s, h @ cov).transpose(0, 2, 1)
    innovation = z - mean @ h.T
    new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    return new_mean, cov - gain @ s @ gain.transpose(0, 2, 1)


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


class HeightScaled:
    """DeepSORT's filter (also ByteTrack's): noise proportional to the box height."""

    F, H = _transition(8, 4, 4)

    def initiate(self, xyxy: npt.NDArray[np.floating]) -> tuple[Array, Array]:
        z = xyxy_to_xyah(xyxy)
        h, one = z[:, 3], np.ones(len(z))
        pos, vel = 2 * STD_WEIGHT_POSITION * h, 10 * STD_WEIGHT_VELOCITY * h
        std = np.column_stack([pos, pos, 1e-2 * one, pos, vel, vel, 1e-5 * one, vel])
        return np.hstack([z, np.zeros_like(z)]), _diag(std**2)

    def process_noise(self, mean: Array) -> Array:
        """Q for each track, (N, 8, 8), scaled by its current height."""
        h = mean[:, 3]
        pos, vel, one = STD_WEIGHT_POSITION * h, STD_WEIGHT_VELOCITY * h, np.ones_like(h)
        return _diag(np.column_stack([pos, pos, 1e-2 * one, pos, vel, vel, 1e-5 * one, vel]) ** 2)

    def measurement_noise(self, mean: Array) -> Array:
        """R for each track, (N, 4, 4), scaled by its current height."""
        h = mean[:, 3]
        pos, one = STD_WEIGHT_POSITION * h, np.ones_like(h)
        return _diag(np.column_stack([pos, pos, 1e-1 * one, pos]) ** 2)

    def predict(self, mean: Array, cov: Array) -> tuple[Array, Array]:
        """x = F x, P = F P F^T + Q (Q from the height before the step, as DeepSORT does)."""
        return mean @ self.F.T, self.F @ cov @ self.F.T + self.process_noise(mean)

    def project(self, mean: Array, cov: Array) -> tuple[Array, Array]:
        """Expected measurement and its covariance S = H P H^T + R, per track."""
        return mean[:, :4], cov[:, :4, :4] + self.measurement_noise(mean)

    def update(
        self, mean: Array, cov: Array, xyxy: npt.NDArray[np.floating]
    ) -> tuple[Array, Array]:
        return _correct(mean, cov, self.H, self.measurement_noise(mean), xyxy_to_xyah(xyxy))

    def boxes(self, mean: Array) -> Array:
        return xyah_to_xyxy(mean)

    def mahalanobis_sq(self, mean: Array, cov: Array, xyxy: npt.NDArray[np.floating]) -> Array:
        """(T, N) squared Mahalanobis distances of N boxes to T tracks' projections."""
        z_mean, s = self.project(mean, cov)
        diff = xyxy_to_xyah(xyxy)[None, :, :] - z_mean[:, None, :]
        distances: Array = np.einsum("tni,tij,tnj->tn", diff, np.linalg.inv(s), diff)
        return distances


class AreaRatio:
    """SORT's filter: (cx, cy, area, ratio) with fixed noise, as ``abewley/sort`` sets it up."""

    F, H = _transition(7, 4, 3)
    Q = np.diag([1.0, 1.0, 1.0, 1.0, 1e-2, 1e-2, 1e-4])
    """filterpy's identity default, velocities times 0.01 and the area velocity 0.01 again."""
    R = np.diag([1.0, 1.0, 10.0, 10.0])
    P0 = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])
    """Unobserved velocities start very uncertain."""

    @staticmethod
    def measure(xyxy: npt.NDArray[np.floating]) -> Array:
        """(N, 4) corner boxes -> (N, 4) centre, area, aspect ratio."""
        box = np.asarray(xyxy, np.float64)
        wh = box[:, 2:] - box[:, :2]
        return np.column_stack([box[:, :2] + wh / 2, wh[:, 0] * wh[:, 1], wh[:, 0] / wh[:, 1]])

    def initiate(self, xyxy: npt.NDArray[np.floating]) -> tuple[Array, Array]:
        z = self.measure(xyxy)
        mean = np.hstack([z, np.zeros((len(z), 3))])
        return mean, np.repeat(self.P0[None], len(z), axis=0)

    def predict(self, mean: Array, cov: Array) -> tuple[Array, Array]:
        """One step; an area velocity that would make the area negative is zeroed first."""
        mean = mean.copy()
        mean[mean[:, 6] + mean[:, 2] <= 0, 6] = 0.0
        return mean @ self.F.T, self.F @ cov @ self.F.T + self.Q

    def update(
        self, mean: Array, cov: Array, xyxy: npt.NDArray[np.floating]
    ) -> tuple[Array, Array]:
        return _correct(mean, cov, self.H, self.R, self.measure(xyxy))

    def boxes(self, mean: Array) -> Array:
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.sqrt(mean[:, 2] * mean[:, 3])
            h = mean[:, 2] / w
        half = np.column_stack([w, h]) / 2
        return np.column_stack([mean[:, :2] - half, mean[:, :2] + half])
