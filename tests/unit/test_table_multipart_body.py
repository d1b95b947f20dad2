"""The joined ``$batch`` body is byte for byte what azure-core's ``email`` path writes, for every shape of part the
Table adapters send; anything the MIME generator would rewrite goes back to the SDK's own assembly."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from azure.core.pipeline.transport import HttpRequest as LegacyHttpRequest
from azure.core.rest import HttpRequest
from azure.core.utils._pipeline_transport_rest_shared import _prepare_multipart_body_helper as sdk_body

from shared.adapters.table_transactions import joined_multipart_body, passes_mime_unchanged

URL = "http://127.0.0.1:10002/devstoreaccount1/writebackchanges"


def _part(kind: type[Any], method: str, index: int, body: bytes | None, **headers: str) -> Any:
    base = {
        "Content-Type": "application/json",
        "x-ms-version": "2019-02-02",
        "DataServiceVersion": "3.0",
        "Accept": "application/json;odata=minimalmetadata",
        "x-ms-date": "Wed, 25 Nov 2026 20:00:00 GMT",
        **headers,
    }
    url = URL if method == "POST" else f"{URL}(PartitionKey='p{index}',RowKey='r%2F{index}')"
    if kind is HttpRequest:
        return HttpRequest(method, url, headers=base, content=body)
    request = LegacyHttpRequest(method, url, headers=base)
    if body is not None:
        request.set_bytes_body(body)
    return request


def _entity(i: int, size: int) -> bytes:
    entity = {
        "PartitionKey": "change-1",
        "PartitionKey@odata.type": "Edm.String",
        "RowKey": f"event-{i:08d}",
        "status": "validating",
        "note": 'é ü 漢字 \n\t"quoted" </script>' * size,  # escaped by json.dumps: ASCII on the wire
        "at@odata.type": "Edm.DateTime",
        "at": "2026-11-25T20:00:00.000000Z",
        "big@odata.type": "Edm.Int64",
        "big": "9007199254740993",
    }
    return json.dumps(entity).encode("ascii")


def _batch(kind: type[Any], parts: list[Any]) -> Any:
    changeset = kind("POST", "")
    changeset.set_multipart_mixed(*parts, boundary=f"changeset_{uuid.UUID(int=1)}")
    batch = kind("POST", "http://127.0.0.1:10002/devstoreaccount1/$batch", headers={"Content-Type": "application/json"})
    batch.set_multipart_mixed(changeset, boundary=f"batch_{uuid.UUID(int=2)}", enforce_https=False)
    return batch


SHAPES = {
    "create+create": [("POST", 1, {}), ("POST", 1, {})],
    "replace with If-Match + two events": [
        ("PUT", 1, {"If-Match": "W/\"datetime'2026-11-25T20%3A00Z'\""}),
        ("POST", 1, {}),
        ("POST", 3, {}),
    ],
    "merge": [("PATCH", 2, {"If-Match": "*"})],
    "delete (no body)": [("DELETE", None, {"If-Match": "*"})],
    "a 64 KB property": [("POST", 2000, {})],
    "100 operations": [("POST", 1, {})] * 100,
}


@pytest.mark.parametrize("kind", [HttpRequest, LegacyHttpRequest], ids=["rest", "legacy"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_joined_body_is_byte_identical_to_the_sdk(kind: type[Any], shape: str) -> None:
    def build() -> Any:
        parts = [
            _part(kind, method, i, None if size is None else _entity(i, size), **headers)
            for i, (method, size, headers) in enumerate(SHAPES[shape])
        ]
        return _batch(kind, parts)

    ours, theirs = build(), build()
    assert joined_multipart_body(ours, 0, sdk_body) == sdk_body(theirs, 0) == len(SHAPES[shape])
    assert ours.body == theirs.body
    assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]


@pytest.mark.parametrize(
    ("payload", "unchanged"),
    [
        (b"POST / HTTP/1.1\r\nA: b\r\n\r\n{}", True),
        (b'{"a": "bare\nnewline"}', False),
        (b'{"a": "bare\rreturn"}', False),
        ('{"a": "é"}'.encode(), False),
    ],
)
def test_only_parts_the_mime_generator_keeps_as_they_are_take_the_fast_path(payload: bytes, unchanged: bool) -> None:
    assert passes_mime_unchanged(payload) is unchanged


def test_a_part_the_generator_would_rewrite_is_left_to_the_sdk() -> None:
    def build() -> HttpRequest:
        raw = HttpRequest("POST", URL, headers={"Content-Type": "application/json"}, content=b'{"a": "bare\nnewline"}')
        return _batch(HttpRequest, [raw])

    used: list[int] = []

    def fallback(request: Any, index: int) -> int:
        used.append(index)
        return sdk_body(request, index)

    ours, theirs = build(), build()
    assert joined_multipart_body(ours, 5, fallback) == sdk_body(theirs, 5)
    assert used == [5]
    assert ours.body == theirs.body
