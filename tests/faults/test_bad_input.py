"""Bad input, end to end through the running gateway: every case is a 4xx problem+json naming the field, never a
5xx, and stores nothing — the same Idempotency-Key is then taken in as new by a valid request, and the Audit view of
the changes (all of them, and ``status=accepted``) shows no record from the bad request. Reads with hostile path or
query parameters answer 400/404, never 500, and show nothing that was not asked for.

Cases the gateway gets wrong today are ``xfail(strict=True)`` with the bug in the reason; fixing one turns its test
into an XPASS, which fails the run until the mark is removed.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import AUDIT, Gateway

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

MAX_BODY = 1_048_576
PROBLEM = "application/problem+json"
AUDITOR = "faults-auditor"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# A valid request: after a bad one, the same key with this body must be taken in as new (202, not replayed).
VALID: dict[str, Any] = {
    "target": "local-ehr",
    "operation": "patch",
    "resourceRef": "Patient/faults-none",
    "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0100"}],
    "dryRun": True,
}


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def patch(**fields: Any) -> dict[str, Any]:
    return {**VALID, "dryRun": False, **fields}


def update(resource: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"target": "local-ehr", "operation": "update", "resource": {"resourceType": "Patient", **resource}, **fields}


def create_observation(**elements: Any) -> dict[str, Any]:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
        "code": {"text": "heart rate"},
        **elements,
    }
    return {"target": "local-ehr", "operation": "create", "resource": resource}


def narrative(div: str) -> dict[str, Any]:
    return update({"id": "faults-p1", "text": {"status": "generated", "div": div}})


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def with_patch_value(raw_value: bytes) -> bytes:
    """VALID with its patch value replaced by raw JSON text (which json.dumps could not write)."""
    return encode(patch(patch=[{"op": "add", "path": "/extension", "value": "@@"}])).replace(b'"@@"', raw_value)


XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">'

# --- the gateway over HTTP, including what httpx refuses to send ----------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(gw: Gateway, method: str, target: bytes, headers: dict[str, bytes], body: bytes = b"") -> Answer:
    """One HTTP/1.1 request over a plain socket: the request target and header bytes go out exactly as given."""
    url = urlsplit(gw.base)
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: " + url.netloc.encode(), b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return Answer(int(status_line.split(" ")[1]), {k.lower(): v for k, v in fields.items()}, content)


def auditor(gw: Gateway) -> dict[str, str]:
    return gw.headers(AUDITOR, AUDIT)


def change_ids(gw: Gateway, **params: str) -> set[str]:
    """Every change the Audit role sees (all pages)."""
    ids: set[str] = set()
    token = None
    while True:
        query = {"pageSize": "200", **params, **({"continuationToken": token} if token else {})}
        resp = httpx.get(f"{gw.api}/changes", params=query, headers=auditor(gw), timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        ids |= {item["changeId"] for item in body["items"]}
        token = body.get("continuationToken")
        if not token:
            return ids


@dataclass
class Snapshot:
    every: set[str]
    accepted: set[str]

    @classmethod
    def of(cls, gw: Gateway) -> Snapshot:
        return cls(change_ids(gw), change_ids(gw, status="accepted"))


def assert_problem(status: int, content_type: str, body: Any, expected: int, path: str | None) -> None:
    assert status == expected, body
    assert content_type.startswith(PROBLEM), content_type
    assert body["status"] == expected and body["title"] and body["detail"], body
    if path is not None:
        paths = [issue["path"] for issue in body.get("issues", [])]
        found = any(p.startswith(path[:-1]) for p in paths) if path.endswith("*") else path in paths
        assert found, f"expected an issue at {path!r}, got {paths}: {body}"
        assert all(issue["code"] and issue["message"] for issue in body["issues"]), body


def assert_nothing_stored(gw: Gateway, before: Snapshot, key: str | None, *, key_valid: bool = True) -> None:
    """No record appeared, and the key was not claimed: a valid request with it is new (or refused, if the key is)."""
    after = Snapshot.of(gw)
    assert after.every == before.every, f"stored: {sorted(after.every - before.every)}"
    assert after.accepted <= before.accepted, f"accepted: {sorted(after.accepted - before.accepted)}"
    if key_valid:
        assert key is not None
        resp = gw.submit(VALID, key=key)
        assert resp.status_code == 202, resp.text
        assert "Idempotent-Replayed" not in resp.headers
        assert resp.json()["changeId"] not in before.every
    else:
        headers = {k: v.encode() for k, v in gw.headers().items()} | {"Content-Type": b"application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key.encode("latin-1", "surrogateescape")
        answer = raw_request(gw, "POST", b"/api/v1/changes", headers, encode(VALID))
        assert 400 <= answer.status < 500, answer.body
        assert Snapshot.of(gw).every == before.every


# --- bodies -------------------------------------------------------------------------------------------------


def xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


# Bugs this suite found and that are fixed now (each case below failed before the fix): deep nesting and lone
# surrogate escapes were 500s; NaN/Infinity/1e400, over-deep patch values, non-UTF-8 bodies, lax booleans and
# dot-only ids were taken in and stored.
DEEP_500 = NON_FINITE_STORED = DEEP_VALUE_STORED = NOT_UTF8_STORED = SURROGATE_500 = LAX_BOOL_STORED = (
    DOT_ID_STORED
) = ()


VALID_BYTES = encode(VALID)
BOM = b"\xef\xbb\xbf"
# Ids with path tricks, escapes, control characters and quotes: refused as a resource id and in a resourceRef.
BAD_IDS = [
    ("dotdot-slash", "../x"),
    ("pct2F", "a%2Fb"),
    ("slash", "a/b"),
    ("backslash", "a\\b"),
    ("hash", "a#b"),
    ("question", "a?b"),
    ("ctrl", "a\x01b"),
    ("single-quote", "a'b"),
    ("double-quote", 'a"b'),
    ("65-chars", "a" * 65),
]

BODY_CASES = [
    # malformed JSON
    pytest.param(VALID_BYTES[:-7], 400, "", id="truncated"),
    pytest.param(b"", 400, "", id="empty-body"),
    pytest.param(VALID_BYTES + b"garbage", 400, "", id="trailing-garbage"),
    pytest.param(VALID_BYTES + b"{}", 400, "", id="trailing-second-object"),
    pytest.param(b"{'target': 'local-ehr'}", 400, "", id="single-quotes"),
    pytest.param(b'{"target":"local-ehr",}', 400, "", id="trailing-comma"),
    pytest.param(VALID_BYTES.replace(b'"local-ehr"', b"NaN"), 400, "/target", id="nan-as-target"),
    pytest.param(with_patch_value(b"NaN"), 400, "/patch/0/value", marks=NON_FINITE_STORED, id="nan-in-patch-value"),
    pytest.param(with_patch_value(b"-Infinity"), 400, "/patch/0/value", marks=NON_FINITE_STORED, id="infinity"),
    pytest.param(VALID_BYTES.replace(b'"local-ehr"', b"1e999999"), 400, "/target", id="huge-exponent-as-target"),
    pytest.param(with_patch_value(b"1e400"), 400, "/patch/0/value", marks=NON_FINITE_STORED, id="huge-exponent-value"),
    pytest.param(with_patch_value(b"1" * 5000), 400, "", id="5000-digit-integer"),
    pytest.param(
        encode(create_observation(valueQuantity={"value": "@@"})).replace(b'"@@"', b"1e400"),
        400,
        "/resource/valueQuantity/value",
        id="huge-exponent-in-resource",
    ),
    pytest.param(nested(10_000), 400, "", marks=DEEP_500, id="arrays-10000-deep"),
    pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "", marks=DEEP_500, id="objects-10000-deep"),
    pytest.param(with_patch_value(nested(10_000)), 400, "", marks=DEEP_500, id="patch-value-10000-deep"),
    pytest.param(with_patch_value(nested(300)), 400, "/patch/0/value*", marks=DEEP_VALUE_STORED, id="value-300-deep"),
    pytest.param(
        encode(update({"id": "faults-p1", "extension": [{"url": "http://x", "extension": ["@@"]}]})).replace(
            b'"@@"', b'{"url":"http://x","extension":[' * 60 + b"{}" + b"]}" * 60
        ),
        400,
        "/resource/extension/0/extension/0*",
        id="resource-nested-120-deep",
    ),
    pytest.param(b'{"target": "local-\xff\xfe"}', 400, "", id="invalid-utf8"),
    pytest.param(VALID_BYTES.replace(b"555-0100", b"555-\xc0\xaf"), 400, "", id="overlong-utf8"),
    pytest.param(
        VALID_BYTES.replace(b"555-0100", b"\\ud800"), 400, "/patch/0/value", marks=SURROGATE_500, id="surrogate"
    ),
    pytest.param(
        VALID_BYTES.replace(b"/telecom/0/value", b"/\\udc00"), 400, "/patch/0/path", marks=SURROGATE_500, id="surr-path"
    ),
    pytest.param(BOM + b"{not json", 400, "", id="bom-then-garbage"),
    pytest.param(BOM + VALID_BYTES, 400, "", marks=NOT_UTF8_STORED, id="bom-then-valid"),
    pytest.param(VALID_BYTES.decode().encode("utf-16"), 400, "", marks=NOT_UTF8_STORED, id="utf-16"),
    pytest.param(VALID_BYTES.decode().encode("utf-32-le"), 400, "", marks=NOT_UTF8_STORED, id="utf-32"),
    pytest.param(b"[]", 400, "", id="array-body"),
    pytest.param(b'"text"', 400, "", id="string-body"),
    pytest.param(b"null", 400, "", id="null-body"),
    # wrong types
    pytest.param(encode(patch(target=5)), 400, "/target", id="target-number"),
    pytest.param(encode(patch(target=None)), 400, "/target", id="target-null"),
    pytest.param(encode(patch(target="local-ehr/../x")), 400, "/target", id="target-path"),
    pytest.param(encode(patch(operation=["patch"])), 400, "/operation", id="operation-list"),
    pytest.param(encode(patch(operation="PATCH")), 400, "/operation", id="operation-upper"),
    pytest.param(encode(patch(patch={"op": "replace", "path": "/a", "value": 1})), 400, "/patch", id="patch-object"),
    pytest.param(encode(patch(patch=[])), 400, "/patch", id="patch-empty"),
    pytest.param(encode(patch(patch=[{"op": "jump", "path": "/a"}])), 400, "/patch/0/op", id="patch-op-unknown"),
    pytest.param(encode(patch(patch=[{"op": "add", "path": "a", "value": 1}])), 400, "/patch/0/path", id="patch-path"),
    pytest.param(encode(patch(patch=[{"op": "move", "path": "/a"}])), 400, "/patch/0", id="patch-move-no-from"),
    pytest.param(encode(patch(dryRun="yes")), 400, "/dryRun", marks=LAX_BOOL_STORED, id="dryRun-yes"),
    pytest.param(encode(patch(dryRun=1)), 400, "/dryRun", marks=LAX_BOOL_STORED, id="dryRun-1"),
    pytest.param(encode(patch(dryRun=None)), 400, "/dryRun", id="dryRun-null"),
    pytest.param(encode(patch(reason=["why"])), 400, "/reason", id="reason-list"),
    pytest.param(encode(patch(reason="x" * 1025)), 400, "/reason", id="reason-too-long"),
    pytest.param(encode(patch(baseVersion=1.5)), 400, "/baseVersion", id="baseVersion-float"),
    pytest.param(encode(patch(baseVersion='W/"../1"')), 400, "/baseVersion", id="baseVersion-path"),
    pytest.param(encode(patch(colour="red")), 400, "/colour", id="unknown-field"),
    pytest.param(encode(update({"id": "faults-p1"}, patch=VALID["patch"])), 400, "/patch", id="update-with-patch"),
    pytest.param(encode({**patch(), "resource": {"resourceType": "Patient"}}), 400, "/resource", id="patch-with-res"),
    pytest.param(encode(update({"id": 5})), 400, "/resource/id", id="update-id-number"),
    pytest.param(
        encode({"target": "local-ehr", "operation": "create", "resource": []}), 400, "/resource", id="resource-list"
    ),
    pytest.param(encode(update({"resourceType": "Bundle", "id": "b1"})), 400, "/resource/resourceType", id="bundle"),
    # R5-only and unknown elements
    pytest.param(encode(create_observation(triggeredBy=[{"type": "reflex"}])), 400, "Observation.triggeredBy", id="r5"),
    pytest.param(
        encode(create_observation(bodyStructure={"reference": "BodyStructure/1"})),
        400,
        "Observation.bodyStructure",
        id="r5-bodyStructure",
    ),
    pytest.param(encode(update({"id": "faults-p1", "foo": 1})), 400, "Patient.foo", id="Patient.foo"),
    pytest.param(encode(update({"id": "faults-p1", "name": [{"nickname": "x"}]})), 400, "Patient.name[0].nickname"),
    # bad codes
    pytest.param(encode(update({"id": "faults-p1", "gender": "robot"})), 400, "Patient.gender", id="gender-robot"),
    pytest.param(encode(create_observation(status="bogus")), 400, "Observation.status", id="obs-status-bogus"),
    pytest.param(
        encode(update({"id": "faults-p1", "telecom": [{"system": "pigeon", "value": "1"}]})),
        400,
        "Patient.telecom[0].system",
        id="telecom-system",
    ),
    pytest.param(encode(update({"id": "faults-p1", "birthDate": "1980-13-45"})), 400, "Patient.birthDate", id="date"),
    pytest.param(encode(update({"id": "faults-p1", "active": "true"})), 400, "Patient.active", id="active-string"),
    # references
    *[
        pytest.param(
            encode(create_observation(subject={"reference": ref})), 400, "Observation.subject.reference", id=name
        )
        for name, ref in [
            ("javascript-ref", "javascript:alert(1)"),
            ("JavaScript-ref", " JavaScript:alert(document.cookie)"),
            ("data-ref", "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="),
            ("vbscript-ref", "vbscript:msgbox(1)"),
            ("dotdot-ref", "Patient/../Patient/1"),
            ("encoded-ref", "Patient/a%2F..%2Fb"),
            ("backslash-ref", "Patient\\1"),
            ("file-ref", "file:///etc/passwd"),
        ]
    ],
    # narrative
    *[
        pytest.param(encode(narrative(div)), 400, "Patient.text.div", id=name)
        for name, div in [
            ("script", f"{XHTML}<script>alert(1)</script>x</div>"),
            ("onclick", f'{XHTML}<p onclick="alert(1)">x</p></div>'),
            ("onmouseover-upper", f'{XHTML}<p ONMOUSEOVER="alert(1)">x</p></div>'),
            ("javascript-href", f'{XHTML}<a href="javascript:alert(1)">x</a></div>'),
            ("data-img", f'{XHTML}<img src="data:text/html,&lt;script&gt;"/></div>'),
            ("iframe", f'{XHTML}<iframe src="https://example.org"></iframe>x</div>'),
            ("style-expression", f'{XHTML}<p style="width: expression(alert(1))">x</p></div>'),
            ("entity-xxe", f'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>{XHTML}&x;</div>'),
            ("not-xhtml", "<div><script>alert(1)</script></div>"),
        ]
    ],
    # ids with path tricks, escapes, control characters and quotes
    *[
        pytest.param(encode(update({"id": bad})), 400, "Patient.id", id=f"resource.id-{name}")
        for name, bad in [*BAD_IDS, ("newline", "a\nb"), ("space", "a b"), ("empty", "")]
    ],
    *[
        pytest.param(encode(patch(resourceRef=f"Patient/{bad}")), 400, "/resourceRef", id=f"resourceRef-{name}")
        for name, bad in BAD_IDS
    ],
    pytest.param(encode(patch(resourceRef="../Patient/x")), 400, "/resourceRef", id="resourceRef-leading-dotdot"),
    pytest.param(encode(patch(resourceRef="Patient")), 400, "/resourceRef", id="resourceRef-no-id"),
    pytest.param(encode(patch(resourceRef="Medication/m1")), 400, "/resourceRef", id="resourceRef-type-not-accepted"),
    pytest.param(encode(update({"id": ".."})), 400, "Patient.id", marks=DOT_ID_STORED, id="resource.id-dotdot"),
    pytest.param(encode(update({"id": "."})), 400, "Patient.id", marks=DOT_ID_STORED, id="resource.id-dot"),
    pytest.param(encode(patch(resourceRef="Patient/..")), 400, "/resourceRef", marks=DOT_ID_STORED, id="ref-dotdot"),
    pytest.param(encode(patch(resourceRef="Patient/.")), 400, "/resourceRef", marks=DOT_ID_STORED, id="ref-dot"),
    pytest.param(
        encode(update({"id": "faults-p1"}, resourceRef="Patient/faults-p2")), 400, "/resourceRef", id="ref-mismatch"
    ),
]


@pytest.mark.parametrize(("raw", "status", "path"), BODY_CASES)
def test_bad_body_is_a_4xx_naming_the_field_and_stores_nothing(
    gateway: Gateway, raw: bytes, status: int, path: str | None
) -> None:
    before = Snapshot.of(gateway)
    key = f"bad-{uuid.uuid4()}"
    resp = gateway.submit(raw, key=key)
    assert resp.status_code < 500, f"{resp.status_code} {resp.text}"
    assert_problem(resp.status_code, resp.headers["Content-Type"], resp.json(), status, path)
    assert_nothing_stored(gateway, before, key)


# --- sizes --------------------------------------------------------------------------------------------------


def valid_padded_to(size: int) -> bytes:
    """VALID, padded with insignificant whitespace to exactly ``size`` bytes."""
    return VALID_BYTES + b" " * (size - len(VALID_BYTES))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(valid_padded_to(MAX_BODY + 1), id="valid-json-1MiB-plus-1"),
        pytest.param(encode(create_observation(note=[{"text": "x" * MAX_BODY}])), id="large-resource"),
        pytest.param(b"x" * (3 * MAX_BODY), id="3MiB-garbage"),
    ],
)
def test_oversized_body_is_413_and_stores_nothing(gateway: Gateway, raw: bytes) -> None:
    before = Snapshot.of(gateway)
    key = f"big-{uuid.uuid4()}"
    resp = gateway.submit(raw, key=key)
    assert_problem(resp.status_code, resp.headers["Content-Type"], resp.json(), 413, None)
    assert resp.json()["type"].endswith("payload-too-large")
    assert_nothing_stored(gateway, before, key)


def test_oversized_chunked_body_without_content_length_is_413(gateway: Gateway) -> None:
    before = Snapshot.of(gateway)
    key = f"chunked-{uuid.uuid4()}"
    headers = {**gateway.headers(), "Idempotency-Key": key, "Content-Type": "application/json"}

    def chunks() -> Any:
        yield b'{"target":"local-ehr","operation":"patch","resourceRef":"Patient/x","reason":"'
        for _ in range(1100):
            yield b"a" * 1024
        yield b'"}'

    resp = httpx.post(f"{gateway.api}/changes", content=chunks(), headers=headers, timeout=30)
    assert_problem(resp.status_code, resp.headers["Content-Type"], resp.json(), 413, None)
    assert_nothing_stored(gateway, before, key)


def test_a_body_of_exactly_the_limit_is_taken_in(gateway: Gateway) -> None:
    resp = gateway.submit(valid_padded_to(MAX_BODY))
    assert resp.status_code == 202, resp.text


# --- the Idempotency-Key header -----------------------------------------------------------------------------

KEY_CASES = [
    pytest.param(b"a\x01b", 400, id="control-char"),
    pytest.param(b"a\x7fb", 400, id="DEL"),
    pytest.param(b"a\tb", 400, id="tab"),
    pytest.param(b"k" * 256, 400, id="256-chars"),
    pytest.param(b"", 400, id="empty"),
    pytest.param("clé".encode(), 400, id="non-ascii-utf8"),
    pytest.param(b"cl\xe9", 400, id="non-ascii-latin1"),
]


@pytest.mark.parametrize(("key", "status"), KEY_CASES)
def test_bad_idempotency_key_is_400_naming_the_header(gateway: Gateway, key: bytes, status: int) -> None:
    before = Snapshot.of(gateway)
    headers = {k: v.encode() for k, v in gateway.headers().items()}
    headers |= {"Content-Type": b"application/json", "Idempotency-Key": key}
    answer = raw_request(gateway, "POST", b"/api/v1/changes", headers, VALID_BYTES)
    assert_problem(answer.status, answer.headers["content-type"], answer.json(), status, "Idempotency-Key")
    assert_nothing_stored(gateway, before, key.decode("latin-1"), key_valid=False)


@pytest.mark.parametrize("key", [pytest.param(b"a\x00b", id="NUL"), pytest.param(b"a\rb", id="CR")])
def test_header_bytes_the_http_server_refuses_are_a_4xx(gateway: Gateway, key: bytes) -> None:
    before = Snapshot.of(gateway)
    headers = {k: v.encode() for k, v in gateway.headers().items()} | {"Idempotency-Key": key}
    answer = raw_request(gateway, "POST", b"/api/v1/changes", headers, VALID_BYTES)
    assert 400 <= answer.status < 500, answer.body
    assert Snapshot.of(gateway).every == before.every


@pytest.mark.parametrize(
    "prefix",
    ["../", "..%2F..%2F", "a%2Fb", "a/b", "a\\b", "a#b", "a?b=1&c", "a'b", 'a"b', "' or ''='", "%00", "x" * 200],
)
def test_printable_keys_with_path_and_quote_characters_are_kept_apart(gateway: Gateway, prefix: str) -> None:
    """Keys are 1-255 printable ASCII characters: these are valid, must be stored safely (escaped), replay, and
    not collide with a key that differs only in how a character is escaped."""
    suffix = uuid.uuid4().hex[:8]
    key, lookalike = f"{prefix}{suffix}", f"{prefix.replace('/', '%2F')}{suffix}-2"
    first = gateway.submit(VALID, key=key)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers, first.text
    again = gateway.submit(VALID, key=key)
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true", again.text
    assert again.json()["changeId"] == first.json()["changeId"]
    other = gateway.submit(VALID, key=lookalike)
    assert other.status_code == 202 and "Idempotent-Replayed" not in other.headers, other.text
    assert other.json()["changeId"] != first.json()["changeId"]
    changed = gateway.submit({**VALID, "reason": "different"}, key=key)
    assert changed.status_code == 422, changed.text
    assert "Idempotency-Key" in [i["path"] for i in changed.json()["issues"]]


# --- reads with hostile path and query parameters -------------------------------------------------------------

HOSTILE_IDS = [
    "..%2F..%2Fetc",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "a%2Fb",
    "a%5Cb",
    "a%23b",
    "a%3Fb",
    "a%27b",
    "a%27%20or%20PartitionKey%20ne%20%27",
    "a%22b",
    "a%01b",
    "a%00b",
    "a%0D%0Ab",
    "%25",
    "%FF",
    "%C3%A9",
    "x" * 2000,
    "%27" * 300,
]


def assert_hostile_read(
    resp: httpx.Response | Answer, known: set[str], *, allowed: tuple[int, ...] = (400, 404)
) -> None:
    status = resp.status_code if isinstance(resp, httpx.Response) else resp.status
    text = resp.text if isinstance(resp, httpx.Response) else resp.body.decode("utf-8", "replace")
    assert status < 500, f"{status} {text}"
    assert status in allowed, f"{status} {text}"
    leaked = [change_id for change_id in known if change_id in text]
    assert not leaked, f"the answer shows changes it was not asked for: {leaked}"


@pytest.fixture(scope="module")
def known_changes(gateway: Gateway) -> set[str]:
    """Some changes of two apps, so that a hostile read that leaks has something to leak."""
    for app in ("crm", "faults-other-app"):
        for _ in range(2):
            assert gateway.submit(VALID, app=app).status_code == 202
    ids = change_ids(gateway)
    assert len(ids) >= 4
    return ids


@pytest.mark.parametrize("change_id", HOSTILE_IDS)
@pytest.mark.parametrize("suffix", ["", "/lineage"])
def test_hostile_change_id_in_the_path_is_404(
    gateway: Gateway, known_changes: set[str], change_id: str, suffix: str
) -> None:
    target = f"/api/v1/changes/{change_id}{suffix}".encode()
    for headers in (auditor(gateway), gateway.headers()):
        answer = raw_request(gateway, "GET", target, {k: v.encode() for k, v in headers.items()})
        assert_hostile_read(answer, known_changes)


@pytest.mark.parametrize("change_id", ["..%2F..%2Fetc", "a%27b", "a%00b", "x" * 2000])
@pytest.mark.parametrize("action", ["approval", "cancel"])
def test_hostile_change_id_in_a_decision_is_4xx(
    gateway: Gateway, known_changes: set[str], change_id: str, action: str
) -> None:
    headers = gateway.headers("faults-approver", ["Writeback.Approve", "Writeback.Operate"])
    encoded = {k: v.encode() for k, v in headers.items()} | {"Content-Type": b"application/json"}
    body = encode({"decision": "approve", "comment": "ok"}) if action == "approval" else b""
    answer = raw_request(gateway, "POST", f"/api/v1/changes/{change_id}/{action}".encode(), encoded, body)
    assert_hostile_read(answer, known_changes, allowed=(400, 404, 405))
    assert change_ids(gateway) >= known_changes


@pytest.mark.parametrize(
    "raw_path",
    [
        "/api/v1/changes/../../etc/passwd",
        "/api/v1/changes/%2e%2e/%2e%2e/etc/passwd",
        "/api/v1/changes/a/b/c/d",
        "/api/v1//changes",
        "/api/v1/changes/%0d%0aSet-Cookie:%20x=1",
    ],
)
def test_hostile_raw_paths_are_4xx(gateway: Gateway, known_changes: set[str], raw_path: str) -> None:
    answer = raw_request(gateway, "GET", raw_path.encode(), {k: v.encode() for k, v in auditor(gateway).items()})
    assert_hostile_read(answer, known_changes, allowed=(400, 404, 405))
    assert "set-cookie" not in answer.headers


LINEAGE_PATHS = [
    "local-ehr/Patient/a%2Fb",
    "local-ehr/Patient/..%2F..%2Fetc",
    "local-ehr/Patient/a%23b",
    "local-ehr/Patient/a%3Fb",
    "local-ehr/Patient/a%5Cb",
    "local-ehr/Patient/a%00b",
    "local-ehr/Patient/a%27b",
    "local-ehr/Patient/a%27%20or%20PartitionKey%20ne%20%27",
    "local-ehr/Patient/%FF",
    "local-ehr/Patient/" + "x" * 2000,
    "local-ehr/Pat%7Cient/x",
    "local-ehr%7CPatient/faults-none/x",
    "a%27%20or%201%20eq%201/Patient/x",
    "x" * 2000 + "/Patient/x",
]


@pytest.mark.parametrize("path", LINEAGE_PATHS)
def test_hostile_resource_lineage_never_fails_nor_leaks(gateway: Gateway, known_changes: set[str], path: str) -> None:
    """400/404, or an empty history: a crafted target / type / id cannot reach another resource's changes."""
    answer = raw_request(
        gateway, "GET", f"/api/v1/lineage/{path}".encode(), {k: v.encode() for k, v in auditor(gateway).items()}
    )
    assert_hostile_read(answer, known_changes, allowed=(200, 400, 404))
    if answer.status == 200:
        assert answer.json()["changes"] == []


@pytest.mark.parametrize("path", ["local-ehr/Patient/a%2Fb", "no-such-target/Patient/p1"])
def test_resource_lineage_refuses_ids_and_targets_that_cannot_exist(gateway: Gateway, path: str) -> None:
    resp = httpx.get(f"{gateway.api}/lineage/{path}", headers=auditor(gateway), timeout=30)
    assert resp.status_code in (400, 404), resp.text


def token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


QUERY_CASES = [
    pytest.param({"status": "completed' or 1 eq 1"}, 400, "status", id="status-odata"),
    pytest.param({"status": "accepted' or Status ne '"}, 400, "status", id="status-odata-2"),
    pytest.param({"status": "ACCEPTED"}, 400, "status", id="status-case"),
    pytest.param({"continuationToken": "garbage"}, 400, "continuationToken", id="token-garbage"),
    pytest.param({"continuationToken": "%%%"}, 400, "continuationToken", id="token-percent"),
    pytest.param({"continuationToken": token([1, 2])}, 400, "continuationToken", id="token-list"),
    pytest.param({"continuationToken": token("s")}, 400, "continuationToken", id="token-string"),
    pytest.param({"continuationToken": "x" * 5000}, 400, "continuationToken", id="token-long"),
    pytest.param({"pageSize": "-1"}, 400, "pageSize", id="pageSize-negative"),
    pytest.param({"pageSize": "0"}, 400, "pageSize", id="pageSize-zero"),
    pytest.param({"pageSize": "100000"}, 400, "pageSize", id="pageSize-huge"),
    pytest.param(
        {"pageSize": "1" + "0" * 5000},
        400,
        "pageSize",
        id="pageSize-5000-digits",
    ),
    pytest.param({"pageSize": "1.5"}, 400, "pageSize", id="pageSize-decimal"),
    pytest.param({"pageSize": "1e2"}, 400, "pageSize", id="pageSize-exponent"),
    pytest.param({"pageSize": " 5"}, 400, "pageSize", id="pageSize-space"),
    pytest.param({"pageSize": "0x10"}, 400, "pageSize", id="pageSize-hex"),
    pytest.param(
        {"pageSize": "\u00b2"},
        400,
        "pageSize",
        id="pageSize-superscript-two",
    ),
]


@pytest.mark.parametrize(("params", "status", "path"), QUERY_CASES)
def test_hostile_query_parameters_are_400(
    gateway: Gateway, known_changes: set[str], params: dict[str, str], status: int, path: str
) -> None:
    resp = httpx.get(f"{gateway.api}/changes", params=params, headers=auditor(gateway), timeout=30)
    assert resp.status_code < 500, resp.text
    assert_problem(resp.status_code, resp.headers["Content-Type"], resp.json(), status, path)
    assert_hostile_read(resp, known_changes)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"target": "x' or PartitionKey ne '"}, id="target-odata"),
        pytest.param({"target": "local-ehr' or Target ne 'x"}, id="target-odata-2"),
        pytest.param({"resource": "x' or 1 eq 1 or ResourceType eq '"}, id="resource-odata"),
        pytest.param({"status": "accepted", "target": "x') or (RowKey ne '"}, id="status-and-target-odata"),
        pytest.param({"target": "\x00"}, id="target-nul"),
        pytest.param({"target": "x" * 5000}, id="target-long"),
        pytest.param({"resource": "Patient\r\nX-Injected: 1"}, id="resource-crlf"),
    ],
)
def test_odata_looking_filters_match_nothing(gateway: Gateway, known_changes: set[str], params: dict[str, str]) -> None:
    """The filter values are quoted: text that would widen an OData filter matches nothing and leaks nothing."""
    resp = httpx.get(f"{gateway.api}/changes", params=params, headers=auditor(gateway), timeout=30)
    assert resp.status_code < 500, resp.text
    if resp.status_code == 200:
        assert resp.json()["items"] == [], resp.text
    else:
        assert resp.status_code == 400
    assert_hostile_read(resp, known_changes, allowed=(200, 400))


@pytest.mark.parametrize(
    "forged",
    [
        {"PartitionKey": "x\r\nX-Injected: 1", "RowKey": "record"},
        {"PartitionKey": 5, "RowKey": [1]},
        {"PartitionKey": "'", "RowKey": "' or 1 eq 1"},
        {"PartitionKey": None, "RowKey": None},
        {"PartitionKey": "x" * 9000, "RowKey": "x"},
    ],
)
def test_forged_continuation_tokens_never_fail_nor_widen_a_query(
    gateway: Gateway, known_changes: set[str], forged: dict[str, Any]
) -> None:
    """Tokens are opaque base64 JSON: a forged one may be refused or restart the listing, never a 5xx, and it cannot
    lift the filter (a submitting app's reads stay its own; a target filter stays applied)."""
    params = {"continuationToken": token(forged), "target": "no-such-target"}
    resp = httpx.get(f"{gateway.api}/changes", params=params, headers=auditor(gateway), timeout=30)
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 200:
        assert resp.json()["items"] == []
    lineage = httpx.get(
        f"{gateway.api}/lineage/local-ehr/Patient/no-such-patient",
        params={"continuationToken": token(forged)},
        headers=auditor(gateway),
        timeout=30,
    )
    assert lineage.status_code in (200, 400), lineage.text
    if lineage.status_code == 200:
        assert lineage.json()["changes"] == []


def test_a_submitting_app_cannot_list_or_read_another_apps_change_through_hostile_params(
    gateway: Gateway,
) -> None:
    other = gateway.submit(VALID, app="faults-other-app", user="someone-else").json()["changeId"]
    for_submitter = gateway.headers()
    listing = httpx.get(
        f"{gateway.api}/changes", params={"target": "x' or 1 eq 1 or Target eq '"}, headers=for_submitter, timeout=30
    )
    assert listing.status_code == 403 and other not in listing.text
    for suffix in ("", "/lineage"):
        quoted = other.replace("-", "%2D")
        answer = raw_request(
            gateway,
            "GET",
            f"/api/v1/changes/{quoted}{suffix}".encode(),
            {k: v.encode() for k, v in for_submitter.items()},
        )
        assert answer.status == 404, answer.body
