"""A constant-velocity Kalman filter on boxes as (cx, cy, w, h), the motion model of ByteTrack.

The state is (cx, cy, w, h, vcx, vcy, vw, vh) in pixels and pixels per frame. The noise of every
component is proportional to the box's width or height (a 200 px box jitters more in pixels than a
20 px one), which is why the filter works on (w, h) rather than ByteTrack's (aspect, h): with two
independent sizes, a box whose width changes alone (a turning car) is not forced to change its height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]

_DIM = 4
# x' = F x with unit time steps: the position moves by the velocity; the velocity stays.
_MOTION = np.eye(2 * _DIM) + np.eye(2 * _DIM, k=_DIM)
_OBSERVATION = np.eye(_DIM, 2 * _DIM)


@dataclass(frozen=True)
class KalmanFilter:
    """Predict and update one track's Gaussian; stateless, so one instance serves every track.

    `position_weight` and `velocity_weight` scale the standard deviations by the box size (the values
    of DeepSORT and ByteTrack: 1/20 and 1/160).
    """

    position_weight: float = 1.0 / 20
    velocity_weight: float = 1.0 / 160

    def _sizes(self, weight: float, w: float, h: float) -> Vector:
        return np.array([weight * w, weight * h, weight * w, weight * h])

    def initiate(self, measurement: npt.ArrayLike) -> tuple[Vector, Matrix]:
        """A new track's mean (the box, zero velocity) and covariance from one (cx, cy, w, h)."""
        box = np.asarray(measurement, dtype=np.float64)
        w, h = box[2], box[3]
        # Twice the measurement noise on the position; the unknown velocity gets a wide prior.
        std = np.concatenate(
            [2 * self._sizes(self.position_weight, w, h), 10 * self._sizes(self.velocity_weight, w, h)]
        )
        return np.concatenate([box, np.zeros(_DIM)]), np.diag(np.square(std))

    def predict(self, mean: Vector, covariance: Matrix) -> tuple[Vector, Matrix]:
        """The Gaussian one frame later (process noise scaled by the predicted-from box size)."""
        w, h = mean[2], mean[3]
        std = np.concatenate(
            [self._sizes(self.position_weight, w, h), self._sizes(self.velocity_weight, w, h)]
        )
        new_mean: Vector = _MOTION @ mean
        new_covariance: Matrix = _MOTION @ covariance @ _MOTION.T + np.diag(np.square(std))
        return new_mean, new_covariance

    def update(self, mean: Vector, covariance: Matrix, measurement: npt.ArrayLike) -> tuple[Vector, Matrix]:
        """The Gaussian corrected by a measured (cx, cy, w, h) (noise scaled by the predicted size)."""
        w, h = mean[2], mean[3]
        noise = np.diag(np.square(self._sizes(self.position_weight, w, h)))
        projected_cov = _OBSERVATION @ covariance @ _OBSERVATION.T + noise
        # K = P H^T S^-1, solved rather than inverted (S is symmetric positive definite).
        gain = np.linalg.solve(projected_cov, _OBSERVATION @ covariance).T
        innovation = np.asarray(measurement, dtype=np.float64) - _OBSERVATION @ mean
        new_mean: Vector = mean + gain @ innovation
        new_covariance: Matrix = covariance - gain @ projected_cov @ gain.T
        return new_mean, new_covariance


def xyxy_to_cxcywh(box: npt.ArrayLike) -> Vector:
    """(x1, y1, x2, y2) -> (cx, cy, w, h), float64."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


def cxcywh_to_xyxy(box: npt.ArrayLike) -> Vector:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), float64."""
    cx, cy, w, h = np.asarray(box, dtype=np.float64)[:4]
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
