"""The documented API against what the server does. schemathesis generates requests from
/openapi.json for the detect routes and /model, schema-valid and schema-violating (query strings,
JSON bodies, multipart uploads), and checks every answer: no 5xx; a documented status, content type
and, for JSON, schema (our error body included); violating requests refused; the API key required
(each request is also sent without it); valid requests accepted. For that last check, every other
case is made `realistic` (an uploaded file must also be an image or a clip, which no schema can say); the
others keep their random bytes, a documented 415."""

from __future__ import annotations

import base64
import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from tests.support.app import encode, fake_app, serving, solid, topk_rows
from tests.support.video import make_clip, sample_frames

pytestmark = [pytest.mark.api, pytest.mark.slow]  # the fuzzer

ROWS = [[2, 2, 20, 20, 0.9, 0], [4, 4, 30, 30, 0.5, 1]]
KEY = "fuzz-key-123"
MAX_IMAGES = 4
# Refusing more images than the per-request limit (413 too_many_images) is a refusal too.
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5XX"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
)
TRACKER_THRESHOLDS = ("track_high_thresh", "track_low_thresh", "new_track_thresh")
PNG = encode(solid(40, 56, (200, 30, 30)))
CLIP = make_clip(sample_frames(3))
DETECT = ["/detect", "/detect/json", "/detect/annotated", "/detect/video"]
# Every documented operation but /admin/reload (a valid body names a model folder, which no schema
# can generate; tests/service/http/test_reload.py) and the streams (below): GET unless listed in
# DETECT or as POST below.
PATHS = [
    *DETECT,
    "/healthz",
    "/readyz",
    "/metrics",
    "/model",
    "/model/sample",
    *("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats"),
    *(
        f"/v2/models/{{name}}{v}{end}"
        for v in ("", "/versions/{version}")
        for end in ("", "/ready", "/config", "/stats", "/infer")
    ),
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model")
    app, _ = fake_app(model_dir, topk_rows(ROWS), max_images_per_request=MAX_IMAGES, api_keys=[KEY])
    with serving(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json", config=CONFIG)


def realistic(case) -> None:
    """What the schema cannot say, made true: the generated files (multipart parts, base64 strings in
    JSON) become a real PNG (a video part a real clip), at most the server's per-request limit of
    them, while a value a negative case put in a file's place (an array, a number) stays what it is,
    so the case is still one the server must refuse; `classes` is left out (which ids and names
    exist is the model's, not the schema's), and so are the tracker's thresholds (they must be
    ordered, low <= high <= new)."""
    if isinstance(case.query, dict):
        case.query.pop("classes", None)
        for threshold in TRACKER_THRESHOLDS:  # they must be ordered, which no schema can say
            case.query.pop(threshold, None)
    if not isinstance(case.body, dict):
        return
    case.body.pop("classes", None)
    if isinstance(case.body.get("video"), str | bytes):
        case.body["video"] = CLIP
    file = base64.b64encode(PNG).decode() if case.media_type == "application/json" else PNG
    if isinstance(case.body.get("image"), str | bytes):
        case.body["image"] = file
    if isinstance(value := case.body.get("images"), list):  # each file part; a negative case's non-file stays
        kept = value[: MAX_IMAGES - ("image" in case.body)]
        case.body["images"] = [file if isinstance(v, str | bytes) else v for v in kept]


# Nor the streams: a valid POST /streams opens a source the server connects to, and the others
# answer for a stream that exists (tests/service/http/test_streams.py).
STREAMS = {"/streams", "/streams/{stream_id}", "/streams/{stream_id}/events", "/streams/{stream_id}/mjpeg"}


# Nor the model repository's load and unload (they change what the server serves; a valid one names
# a model of the repository) and its index (tests/service/kserve/test_repository.py).
REPOSITORY = {
    "/v2/repository/index",
    "/v2/repository/models/{name}/load",
    "/v2/repository/models/{name}/unload",
}


def test_every_operation_but_reload_is_fuzzed(api_schema):
    documented = {op.ok().path for op in api_schema.get_all_operations()}
    assert documented - set(PATHS) == {"/admin/reload", *STREAMS, *REPOSITORY}


@pytest.mark.parametrize("path", PATHS)
def test_every_generated_request_gets_a_documented_answer(api_schema, path):
    (operation,) = [op.ok() for op in api_schema.get_all_operations() if op.ok().path == path]
    answers: collections.Counter[int] = collections.Counter()

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(*(operation.as_strategy(mode) for mode in GenerationMode)), st.booleans())
    def check(case, realistic_case):
        if realistic_case:
            realistic(case)
        unknowable = [] if realistic_case else [positive_data_acceptance]  # random bytes are no image
        response = case.call_and_validate(headers={"X-API-Key": KEY}, excluded_checks=unknowable)
        answers[response.status_code] += 1

    check()
    assert answers, "no request was made"
    if path in DETECT:  # detections and refusals were reached, not only the key check
        assert sum(answers.values()) >= 50 and 200 in answers and answers.keys() & {415, 422}, answers
