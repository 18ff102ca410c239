"""Multi-object tracking for video: ByteTrack on a frame's detections (numpy only, no framework)."""

from service.tracking.assignment import Assignment, iou_cost, linear_assignment
from service.tracking.bytetrack import ByteTracker, TrackerSettings
from service.tracking.kalman import KalmanFilter

__all__ = [
    "Assignment",
    "ByteTracker",
    "KalmanFilter",
    "TrackerSettings",
    "iou_cost",
    "linear_assignment",
]
