"""Model runtimes behind one small interface (`Backend`); see `factory.create_backend`.

Only the interface and the fake are imported here: each real backend module imports its runtime
(onnxruntime, tensorrt, torch) and is loaded by the factory when chosen.
"""

from service.backends.base import Backend, BackendClosed, BackendError, BackendUnavailable, BaseBackend
from service.backends.factory import (
    BackendMismatch,
    check_backend,
    create_backend,
    effective_max_batch,
    load_checked_backend,
)
from service.backends.fake import FakeBackend

__all__ = [
    "Backend",
    "BackendClosed",
    "BackendError",
    "BackendMismatch",
    "BackendUnavailable",
    "BaseBackend",
    "FakeBackend",
    "check_backend",
    "create_backend",
    "effective_max_batch",
    "load_checked_backend",
]
