"""Every failure the service reports: a status (HTTP's numbers; gRPC maps them to its codes) and a
stable machine-readable `code` that clients switch on. The bodies they become are each transport's
(`service.http.errors`, `service.kserve.grpc_server`)."""

from __future__ import annotations


class ServiceError(Exception):
    """A failure with an HTTP status and a stable `code` (the contract clients switch on)."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(ServiceError):
    status, code = 415, "invalid_image"


class InvalidBase64(ServiceError):
    status, code = 400, "invalid_base64"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class TooManyImages(ServiceError):
    status, code = 413, "too_many_images"


class TooManyPixels(ServiceError):
    status, code = 413, "too_many_pixels"


class TooManyTiles(ServiceError):
    """Sliced inference: more windows than YOLOR_MAX_TILES_PER_IMAGE, or than the queue holds."""

    status, code = 413, "too_many_tiles"


class InvalidVideo(ServiceError):
    """Not a video file, no video stream, or corrupt (before its first frame; after it, the stream
    of results ends with this error)."""

    status, code = 422, "invalid_video"


class UnsupportedVideo(ServiceError):
    """A container or codec outside YOLOR_VIDEO_CONTAINERS / YOLOR_VIDEO_CODECS."""

    status, code = 415, "unsupported_video"


class VideoTooLong(ServiceError):
    """More frames than YOLOR_MAX_VIDEO_FRAMES or seconds than YOLOR_MAX_VIDEO_SECONDS."""

    status, code = 413, "video_too_long"


class NoImages(ServiceError):
    status, code = 422, "no_images"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class SourceNotAllowed(ServiceError):
    """A stream source the server may not open (YOLOR_STREAM_ALLOWED_HOSTS, YOLOR_STREAM_ROOT)."""

    status, code = 403, "source_not_allowed"


class TooManyStreams(ServiceError):
    """YOLOR_MAX_STREAMS streams are open already."""

    status, code = 409, "too_many_streams"


class StreamsUnavailable(ServiceError):
    """Streams need one server process (YOLOR_WORKERS=1): a stream is held by the process that opens it."""

    status, code = 409, "streams_unavailable"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class ShuttingDown(ServiceError):
    status, code = 503, "shutting_down"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class InferenceFailed(ServiceError):
    status, code = 500, "inference_failed"


class ReloadFailed(ServiceError):
    """The new model did not load, check or warm up; the old one keeps serving."""

    status, code = 422, "reload_failed"


class ReloadUnavailable(ServiceError):
    """No reload now: another is running, the server is not ready, or it runs several workers."""

    status, code = 409, "reload_unavailable"


class InvalidTensor(ServiceError):
    """A KServe v2 request whose tensors do not fit the protocol or the model."""

    status, code = 400, "invalid_tensor"


class UnknownModel(ServiceError):
    status, code = 404, "unknown_model"


class ClientDisconnected(ServiceError):
    """The client went away before its answer was ready (nginx's 499; nobody receives the body)."""

    status, code = 499, "client_disconnected"
