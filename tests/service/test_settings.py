"""Settings: YOLOR_* environment variables, bounds, list parsing and cross-field rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.auth import ApiKeys
from service.settings import DEMO_MODEL_DIR, Settings, unknown_variables

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("YOLOR_"):
            monkeypatch.delenv(name)


def test_defaults():
    s = Settings()
    assert s.model_dir == DEMO_MODEL_DIR and s.backend == "auto" and s.device == "auto"
    assert (s.max_delay_ms, s.queue_size, s.request_timeout_s) == (2.0, 256, 30.0)
    assert s.api_keys == [] and s.cors_origins == [] and s.warmup is True
    assert s.intra_op_threads >= 1 and s.preprocess_workers >= 1


def test_environment_variables(monkeypatch):
    env = {
        "YOLOR_MODEL_DIR": "/models/p6",
        "YOLOR_BACKEND": "onnxruntime",
        "YOLOR_DEVICE": "cuda:1",
        "YOLOR_MAX_BATCH_SIZE": "8",
        "YOLOR_MAX_DELAY_MS": "2.5",
        "YOLOR_API_KEYS": "first-key-1, second-key-2",
        "YOLOR_CORS_ORIGINS": '["https://a.example", "https://b.example"]',
        "YOLOR_LOG_LEVEL": "debug",
        "YOLOR_LOG_FORMAT": "json",
        "YOLOR_WARMUP": "false",
        "YOLOR_ONNX_INTRA_OP_THREADS": "3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.model_dir == Path("/models/p6") and s.backend == "onnxruntime" and s.device == "cuda:1"
    assert (s.max_batch_size, s.max_delay_ms) == (8, 2.5)
    assert [k.get_secret_value() for k in s.api_keys] == ["first-key-1", "second-key-2"]
    assert "first-key-1" not in repr(s)  # secrets stay out of logs
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert (s.log_level, s.log_format, s.warmup, s.intra_op_threads) == ("DEBUG", "json", False, 3)


def test_explicit_values_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("YOLOR_PORT", "9000")
    assert Settings(port=9100).port == 9100
    assert Settings().port == 9000


@pytest.mark.parametrize(
    "values",
    [
        {"backend": "tflite"},
        {"device": "gpu"},
        {"device": "cuda:x"},
        {"max_batch_size": 0},
        {"max_delay_ms": -1},
        {"queue_size": 0},
        {"request_timeout_s": 0},
        {"max_body_bytes": 10},
        {"max_images_per_request": 0},
        {"max_image_pixels": 0},
        {"log_format": "xml"},
        {"port": 70000},
        {"api_keys": ["short"]},
        {"queue_size": 4, "max_images_per_request": 8},  # a full request could never be queued
        {"queue_size": 8, "max_batch_size": 16, "max_images_per_request": 4},
        {"max_delay_ms": 1000, "request_timeout_s": 0.5},
        {"backend": "tensorrt", "device": "cpu"},
        {"backend": "torch", "device": "cpu"},
        {"no_such_setting": 1},
    ],
)
def test_invalid_settings_are_refused(values):
    with pytest.raises(ValidationError):
        Settings(**values)


def test_api_keys_compare_by_value():
    keys = ApiKeys(Settings(api_keys="alpha-key-1,beta-key-22").api_keys)
    assert keys.enabled
    assert keys.accepts("alpha-key-1") and keys.accepts("beta-key-22")
    assert not keys.accepts("alpha-key-") and not keys.accepts("alpha-key-12") and not keys.accepts("")
    assert not ApiKeys([]).enabled


def test_unknown_variables_are_reported():
    environ = {"YOLOR_MAX_BATCH": "8", "YOLOR_PORT": "1", "YOLOR_CACHE_DIR": "/c", "HOME": "/root"}
    assert unknown_variables(environ) == ["YOLOR_MAX_BATCH"]


@pytest.mark.parametrize(
    ("device", "index"), [("cuda:3", 3), ("cuda:0", 0), ("cuda", 0), ("auto", 0), ("cpu", 0)]
)
def test_device_index(device, index):
    from service.backends.base import device_index

    assert device_index(device) == index
