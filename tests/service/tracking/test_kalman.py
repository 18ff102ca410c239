"""The Kalman filter's predict and update against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from service.tracking.kalman import KalmanFilter, cxcywh_to_xyxy, xyxy_to_cxcywh

pytestmark = pytest.mark.unit


def test_initiate_puts_the_box_at_rest_with_size_scaled_uncertainty() -> None:
    mean, cov = KalmanFilter(position_weight=0.1, velocity_weight=0.01).initiate([50, 60, 20, 40])
    np.testing.assert_allclose(mean, [50, 60, 20, 40, 0, 0, 0, 0])
    # std: 2 * 0.1 * (w, h, w, h) = (4, 8, 4, 8); 10 * 0.01 * (w, h, w, h) = (2, 4, 2, 4)
    np.testing.assert_allclose(np.diag(cov), [16, 64, 16, 64, 4, 16, 4, 16])
    assert np.count_nonzero(cov - np.diag(np.diag(cov))) == 0


def test_predict_moves_by_the_velocity_and_grows_the_covariance() -> None:
    kf = KalmanFilter(position_weight=0.1, velocity_weight=0.01)
    mean = np.array([10.0, 20, 10, 20, 1, -2, 0.5, 0])
    mean_out, cov_out = kf.predict(mean, np.eye(8))
    np.testing.assert_allclose(mean_out, [11, 18, 10.5, 20, 1, -2, 0.5, 0])
    # F I F^T: position variance 1 + 1 (its velocity's), velocity 1, cross term 1;
    # plus Q = diag((0.1 * (w, h, w, h))^2, (0.01 * (w, h, w, h))^2) with w = 10, h = 20.
    expected = np.eye(8) * 1.0
    expected[:4, :4] += np.eye(4)
    expected[:4, 4:] = expected[4:, :4] = np.eye(4)
    expected += np.diag([1, 4, 1, 4, 0.01, 0.04, 0.01, 0.04])
    np.testing.assert_allclose(cov_out, expected)


def test_update_weighs_prediction_and_measurement_by_their_variances() -> None:
    # Position variance 12 against measurement noise (0.1 * 20)^2 = 4: the gain on the position is
    # 12 / 16 = 0.75, on the velocity (covariance 4 with its position) 4 / 16 = 0.25.
    kf = KalmanFilter(position_weight=0.1, velocity_weight=0.01)
    cov = np.diag([12.0] * 4 + [4.0] * 4)
    cov[:4, 4:] = cov[4:, :4] = 4 * np.eye(4)
    mean = np.array([0.0, 0, 20, 20, 0, 0, 0, 0])
    new_mean, new_cov = kf.update(mean, cov, [4, -8, 20, 20])
    np.testing.assert_allclose(new_mean, [3, -6, 20, 20, 1, -2, 0, 0])
    np.testing.assert_allclose(np.diag(new_cov), [3] * 8)  # 12 - 0.75 * 12; 4 - 0.25 * 4
    np.testing.assert_allclose(new_cov[0, 4], 1)  # 4 - 0.75 * 4
    np.testing.assert_allclose(new_cov, new_cov.T)


def test_box_conversions_are_inverse() -> None:
    box = np.array([3.0, 4, 13, 24])
    np.testing.assert_allclose(xyxy_to_cxcywh(box), [8, 14, 10, 20])
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(box)), box)
