"""The service's request bodies, in-process: what ``POST /jobs``'s envelope model accepts,
normalizes and refuses (with the service's messages), and the OpenAPI document that lists
every body model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from qdispatch.constants import SHARE_LEVELS
from qdispatch.server.app import create_app
from qdispatch.server.config import ServiceConfig
from qdispatch.server.errors import ServiceError
from qdispatch.server.routes.jobs import JobCreate, parse_envelope


def envelope(**fields: Any) -> JobCreate:
    return parse_envelope(orjson.dumps(fields))


def test_defaults_and_normalization() -> None:
    body = envelope(backend="aer_simulator")
    assert (body.backend, body.share_level, body.tags, body.client_info) == (
        "aer_simulator",
        "none",
        [],
        None,
    )
    body = envelope(
        backend="",
        share_level="",
        tags=["b", "a", "b"],
        client_info={"n": 1, "none": None, "s": "x"},
        unknown_field={"ignored": True},
    )
    assert body.backend is None  # "" is no backend: "'backend' is required" follows
    assert body.share_level == "none"
    assert body.tags == ["b", "a"]  # duplicates dropped, order kept
    assert body.client_info == {"n": "1", "none": "None", "s": "x"}  # values stringified
    assert envelope(client_info={}, tags=None, share_level=None).client_info is None


def test_image_is_a_program_jobs_only() -> None:
    assert envelope(image=5).image is None  # a circuit job's image is never read
    assert envelope(program_id="sampler", image="").image is None
    assert envelope(program_id="sampler", image="sampler:1").image == "sampler:1"
    with pytest.raises(ServiceError, match="'image' must be str, got 5"):
        envelope(program_id="sampler", image=5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": {"a": "{x}"}}, "'name' must be str, got {'a': '{x}'}"),
        ({"tags": [1, "a"]}, "'tags' must be a list of strings, got [1, 'a']"),
        ({"share_level": "hub"}, "share_level must be one of none, project, global"),
        ({"client_info": [1]}, "'client_info' must be dict, got [1]"),
        # several problems: the first field in JobCreate's order is named
        ({"tags": 1, "name": 2, "client_info": 3}, "'client_info' must be dict, got 3"),
    ],
)
def test_refused_with_the_services_message(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ServiceError) as caught:
        envelope(**fields)
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        400,
        "invalid_request",
        message,
    )


@pytest.mark.parametrize("raw", [b"[1]", b"{bad"])
def test_an_envelope_that_is_not_an_object(raw: bytes) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_envelope(raw)
    assert (caught.value.status, caught.value.code) == (400, "malformed_json")


def test_openapi_lists_every_request_body(tmp_path: Path) -> None:
    spec = create_app(ServiceConfig(db=tmp_path / "jobs.db")).openapi()
    schemas = spec["components"]["schemas"]
    for model in ("JobCreate", "BulkStatus", "TagsUpdate", "NameUpdate"):
        assert model in schemas, model
    for model in ("SessionCreate", "SessionUpdate"):
        assert model in schemas, model
    body = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/JobCreate"}
    assert schemas["JobCreate"]["properties"]["share_level"]["enum"] == list(SHARE_LEVELS)
    tags = {op["tags"][0] for path in spec["paths"].values() for op in path.values()}
    assert tags == {"service", "programs", "backends", "jobs", "sessions"}
