"""Model runtimes behind one small interface (`Backend`); `factory.create_backend` chooses and loads one.

Only the interface and the fake are imported here (numpy, no pydantic): each real backend module
imports its runtime (onnxruntime, tensorrt, torch) and is loaded by the factory when chosen, and a
backend module can be imported on its own (`yolor bench gpu` imports torch_cuda without the
server's packages).
"""

from service.backends.base import Backend, BackendClosed, BackendError, BackendUnavailable, BaseBackend
from service.backends.fake import FakeBackend

__all__ = ["Backend", "BackendClosed", "BackendError", "BackendUnavailable", "BaseBackend", "FakeBackend"]
