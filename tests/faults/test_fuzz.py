"""Fuzzing the intake with Hypothesis.

(a) In-process, no services: ``ChangesApi`` over the in-memory fakes, the real targets and policy files and the
Easy Auth authenticator, fed generated change requests (valid shapes with mutated fields, random JSON values,
random bytes and byte-mutated valid bodies, FHIR-ish resources with random elements, patches with random ops and
paths) and generated list queries. Invariants: the answer is 202 or a 4xx, never a 5xx; a 4xx is problem+json with a
``detail`` and well-formed ``issues`` and stores nothing (no key claimed, no record, no message); a 202 stored one
record and one message, and its stored body is one the pipeline can read back (``ChangeRequest.model_validate_json``,
what ``prepare_change`` does).

(b) Through the running gateway: fewer examples over HTTP, no 5xx, and a 4xx leaves its Idempotency-Key unclaimed.

Runs are derandomized (a fixed seed, no example database) so CI sees the same cases each time. The number of cases
tried and the status histogram of each test are printed at the end of the module and written to
``fuzz-summary.json`` in pytest's base temporary directory.

Bugs found by fuzzing are pinned as explicit ``xfail(strict=True)`` cases in ``test_bad_input.py``; the strategies
here leave out only the one input class that would hit them by construction (lone surrogate ``\\u`` escapes, and
``pageSize`` values that ``str.isdigit`` accepts and ``int`` refuses), so they keep guarding everything else.
"""

from __future__ import annotations

import json
import string
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.api.caller_identity import encode_easyauth_principal
from shared.api.changes_api import ChangesApi
from shared.api.responses import ApiResponse
from shared.bootstrap import build
from shared.config import Settings
from shared.core.models import ChangeRequest, Principal
from shared.core.policy import Policy
from shared.core.targets import TargetRegistry
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState
from tests.e2e.conftest import AUDIT, Gateway

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
MAX_BODY = 1_048_576
BASE_URL = "http://gateway.test"
CRM = Principal(app_id="crm", user_id="fuzz-user", roles=["Writeback.Submit"])
PROBLEM = "application/problem+json"
IN_PROCESS_EXAMPLES = 300
HTTP_EXAMPLES = 100
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --- figures --------------------------------------------------------------------------------------------------

STATS: dict[str, Counter[int]] = {}


def record(test: str, status: int) -> None:
    STATS.setdefault(test, Counter())[status] += 1


@pytest.fixture(scope="module", autouse=True)
def fuzz_figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if not STATS:
        return
    summary = {
        name: {"tried": sum(hist.values()), "statuses": dict(sorted(hist.items())), "5xx": _five_xx(hist)}
        for name, hist in STATS.items()
    }
    total: Counter[int] = Counter()
    for hist in STATS.values():
        total.update(hist)
    summary["total"] = {"tried": sum(total.values()), "statuses": dict(sorted(total.items())), "5xx": _five_xx(total)}
    (tmp_path_factory.getbasetemp() / "fuzz-summary.json").write_text(json.dumps(summary, indent=2))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_sep("-", "fuzz figures (cases tried, status histogram)")
        for name, figures in summary.items():
            reporter.write_line(
                f"{name}: tried {figures['tried']}, statuses {figures['statuses']}, 5xx {figures['5xx']}"
            )


def _five_xx(hist: Counter[int]) -> int:
    return sum(n for status, n in hist.items() if status >= 500)


# --- the API over fakes ---------------------------------------------------------------------------------------

TARGETS = TargetRegistry.from_file(REPO / "config" / "targets.yaml", {})
POLICY = Policy.from_file(REPO / "config" / "policy.yaml")
SUBMIT_HEADERS = {
    "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal(CRM.app_id, CRM.roles, user_id=CRM.user_id, name="Fuzz")
}
AUDIT_HEADERS = {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("fuzz-auditor", AUDIT, user_id="a1")}


@dataclass
class Services:
    api: ChangesApi
    idempotency: FakeIdempotencyStore
    changes: FakeChangeStore
    payloads: FakePayloadStore
    publisher: FakeMessagePublisher


def services() -> Services:
    """A fresh gateway core per example: one change store, key store, payload store and broker, all in memory."""
    idempotency, changes, payloads = FakeIdempotencyStore(), FakeChangeStore(), FakePayloadStore()
    publisher = FakeMessagePublisher()
    parts = build(
        Settings(max_body_bytes=MAX_BODY, auth_mode="easyauth"),
        idempotency_store=idempotency,
        change_store=changes,
        payload_store=payloads,
        publisher=publisher,
        sweep_state=FakeSweepState(),
        targets=TARGETS,
        policy=POLICY,
    )
    return Services(parts.changes_api, idempotency, changes, payloads, publisher)


def assert_problem(resp: ApiResponse) -> None:
    """A 4xx is RFC 9457 problem+json: its status, a title, a detail, and issues that name a path."""
    assert 400 <= resp.status < 500, (resp.status, resp.body)
    assert resp.content_type == PROBLEM, resp.content_type
    body = resp.body
    assert isinstance(body, dict) and body["status"] == resp.status and body["title"], body
    assert body.get("detail") or body.get("issues"), body
    for issue in body.get("issues", []):
        assert isinstance(issue["path"], str) and issue["code"] and isinstance(issue["message"], str), issue
    json.loads(resp.body_bytes())  # the answer itself is JSON


def submit_and_check(test: str, body: bytes) -> ApiResponse:
    svc = services()
    key = f"fuzz-{uuid.uuid4()}"
    resp = svc.api.submit({**SUBMIT_HEADERS, "Idempotency-Key": key}, body, BASE_URL)
    record(test, resp.status)
    assert resp.status < 500, f"{resp.status} for {body[:300]!r}"
    assert resp.status == 202 or 400 <= resp.status < 500, resp.status
    stored = svc.changes.query(page_size=10).items
    if resp.status == 202:
        assert len(stored) == 1 and stored[0].change_id == resp.body["changeId"]
        assert resp.headers["Location"].endswith(resp.body["changeId"])
        assert [m.change_id for m in svc.publisher.sent] == [resp.body["changeId"]]
        # What the pipeline's prepare_change does first: read the stored request back.
        ChangeRequest.model_validate_json(svc.payloads.get(stored[0].payload))
    else:
        assert_problem(resp)
        assert stored == [], "a 4xx stored a change record"
        assert svc.idempotency.get(CRM.caller_key, key) is None, "a 4xx claimed the Idempotency-Key"
        assert svc.publisher.sent == [], "a 4xx published a message"
    return resp


# --- strategies -----------------------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "",
    " ",
    "local-ehr",
    "LOCAL-EHR",
    "local-ehr ",
    "Patient",
    "Patient/p1",
    "Patient/../p1",
    "../",
    "..",
    ".",
    "%2F",
    "a/b",
    "a\\b",
    "a#b",
    "a?b",
    "'",
    '"',
    "' or 1 eq 1 or '",
    "\x00",
    "\x01",
    "\n",
    "\u2028",
    "\ufeff",
    "é",
    "\U0001d518",  # outside the BMP
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "<script>alert(1)</script>",
    '<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">x</p></div>',
    "create",
    "update",
    "patch",
    "true",
    "NaN",
    "1e400",
    'W/"1"',
    "x" * 300,
]


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` four times in five, else ``bad``: enough plausible input to reach the later checks."""
    return st.sampled_from([True, True, True, True, False]).flatmap(lambda ok: good if ok else bad)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws (Hypothesis weights the ends of an integer range, so not integers(0, n))."""
    return st.sampled_from([False] * (n - 1) + [True])


# Text without lone surrogates (st.text never draws them; json.dumps writes any str as UTF-8-safe JSON).
texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=16,
)
FIELDS = ["target", "operation", "resource", "resourceRef", "patch", "baseVersion", "reason", "dryRun"]
field_names = st.one_of(st.sampled_from(FIELDS), texts)

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "fuzz-p1",
    "name": [{"family": "Tester", "given": ["Pat"]}],
    "gender": "female",
    "birthDate": "1980-01-01",
    "telecom": [{"system": "phone", "value": "555-0000", "use": "home"}],
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/fuzz-p1"},
    "valueQuantity": {"value": 72, "unit": "beats/minute"},
}
TEMPLATES: list[dict[str, Any]] = [
    {"target": "local-ehr", "operation": "update", "resource": PATIENT, "baseVersion": "1", "reason": "fix"},
    {"target": "local-ehr", "operation": "create", "resource": OBSERVATION, "dryRun": True},
    {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/fuzz-p1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0100"}],
    },
]
TEMPLATE_BYTES = [json.dumps(t).encode() for t in TEMPLATES]

FIELD_VALUES: dict[str, Any] = {
    "target": st.one_of(st.sampled_from(["local-ehr", "other-ehr", "local_ehr", "-x", "a" * 65]), json_values),
    "operation": st.one_of(st.sampled_from(["create", "update", "patch", "delete", "Create", ""]), json_values),
    "resourceRef": st.one_of(
        st.sampled_from(["Patient/fuzz-p1", "Patient/..", "Observation/o1", "patient/p1", "Patient/", "/Patient/p"]),
        texts,
        json_values,
    ),
    "baseVersion": st.one_of(st.sampled_from(['W/"3"', "3", 3, True, 3.5, 'W/"', '"3', "3/../4"]), json_values),
    "dryRun": st.one_of(st.booleans(), json_values),
    "reason": st.one_of(texts, json_values),
}


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with one to four of its fields deleted, replaced, added or changed inside."""
    body: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(TEMPLATES))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "replace", "add", "resource-element", "patch-op"]))
        if kind == "delete" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif kind == "replace":
            name = draw(st.sampled_from(FIELDS))
            body[name] = draw(FIELD_VALUES.get(name, json_values))
        elif kind == "add":
            body[draw(field_names)] = draw(json_values)
        elif kind == "resource-element" and isinstance(body.get("resource"), dict) and body["resource"]:
            element = draw(st.one_of(st.sampled_from(sorted(body["resource"])), texts))
            if draw(st.booleans()):
                body["resource"].pop(element, None)
            else:
                body["resource"][element] = draw(json_values)
        elif kind == "patch-op":
            body["patch"] = draw(patch_lists)
    return body


resource_types = mostly(
    st.sampled_from(["Patient", "Observation", "Condition", "AllergyIntolerance", "DocumentReference", "Provenance"]),
    st.one_of(
        st.sampled_from(["Bundle", "Medication", "Evidence", "SubscriptionTopic", "OperationOutcome", "patient", ""]),
        texts,
    ),
)
ELEMENT_NAMES = [
    "id",
    "meta",
    "text",
    "extension",
    "modifierExtension",
    "contained",
    "identifier",
    "active",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "_birthDate",
    "address",
    "managingOrganization",
    "status",
    "category",
    "code",
    "subject",
    "effectiveDateTime",
    "valueQuantity",
    "valueString",
    "value[x]",
    "triggeredBy",
    "clinicalStatus",
    "verificationStatus",
    "content",
    "resourceType",
]
fhir_scalars = st.one_of(
    st.sampled_from(
        [
            *("final", "bogus", "female", "robot", "2020-01-01", "2020-13-45", "1980", "Patient/fuzz-p1", "#c1"),
            *("urn:uuid:6f1c0a52-3a6f-4f57-9a53-0c1e5d6f3f0b", "http://loinc.org", "8867-4", "phone"),
        ]
    ),
    scalars,
)
fhir_objects = st.recursive(
    fhir_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from(["reference", "system", "code", "value", "coding", "div", "url"]), texts),
            children,
            max_size=3,
        ),
        st.builds(lambda ref: {"reference": ref}, texts),
        st.builds(lambda s, c: {"coding": [{"system": s, "code": c}]}, texts, texts),
        st.builds(lambda div: {"status": "generated", "div": div}, texts),
    ),
    max_leaves=12,
)


@st.composite
def fhir_resources(draw: st.DrawFn) -> dict[str, Any]:
    """Half the time a valid Patient or Observation with elements added or replaced, else one built from nothing;
    element names from the R4 models, R5 and made up, values of any shape."""
    names = mostly(st.sampled_from(ELEMENT_NAMES), st.text(alphabet=string.ascii_letters + "_[]", max_size=12))
    if draw(st.booleans()):
        template: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from([PATIENT, OBSERVATION]))))
        template.update(draw(st.dictionaries(names, fhir_objects, min_size=1, max_size=3)))
        return template
    resource: dict[str, Any] = {"resourceType": draw(resource_types)}
    resource.update(draw(st.dictionaries(names, fhir_objects, max_size=6)))
    return resource


@st.composite
def fhir_changes(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "target": "local-ehr",
        "operation": draw(st.sampled_from(["create", "update"])),
        "resource": draw(fhir_resources()),
    }
    if not draw(one_in(5)):
        ids = mostly(st.sampled_from(["fuzz-p1", "a.b-C", "A" * 64]), st.sampled_from(["..", "a/b", "A" * 65, ""]))
        body["resource"]["id"] = draw(st.one_of(ids, texts) if draw(one_in(5)) else ids)
    if draw(st.booleans()):
        body["dryRun"] = True
    return body


pointer_segments = st.one_of(
    st.sampled_from(["telecom", "name", "given", "0", "1", "-", "value", "system", "~0", "~1", "", "..", "%2F"]),
    st.sampled_from(["extension", "meta", "id", "resourceType", "birthDate", "address", "999999999999"]),
    texts,
)
pointers = mostly(
    st.lists(pointer_segments, max_size=5).map(lambda parts: "".join("/" + p for p in parts)),
    texts,
)
OPS = ["add", "remove", "replace", "move", "copy", "test"]


@st.composite
def patch_ops(draw: st.DrawFn) -> dict[str, Any]:
    op: dict[str, Any] = {
        "op": draw(mostly(st.sampled_from(OPS), st.one_of(st.sampled_from(["ADD", "delete"]), texts)))
    }
    if not draw(one_in(10)):
        op["path"] = draw(pointers)
    if not draw(one_in(5)):
        op["value"] = draw(json_values)
    if draw(one_in(4)):
        op["from"] = draw(pointers)
    if draw(one_in(10)):
        op[draw(texts)] = draw(json_values)
    return op


patch_lists = mostly(st.lists(patch_ops(), min_size=1, max_size=3), st.one_of(st.just([]), json_values))


@st.composite
def patch_changes(draw: st.DrawFn) -> dict[str, Any]:
    ref = draw(
        mostly(
            st.sampled_from(["Patient/fuzz-p1", "Observation/o1", "Patient/a.b-c"]),
            st.one_of(st.sampled_from(["Patient/..", "Medication/m1", "Patient/a%2Fb", "Patient"]), texts),
        )
    )
    return {"target": "local-ehr", "operation": "patch", "resourceRef": ref, "patch": draw(patch_lists)}


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A valid body with a few byte-level edits: insertions, deletions, replacements, truncation, duplication."""
    data = bytearray(draw(st.sampled_from(TEMPLATE_BYTES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "duplicate"]))
        if kind == "insert":
            data[at:at] = draw(st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(JSON_BITS)))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[max(0, at - 16) : at]
    return bytes(data)


JSON_BITS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\\u0000", b"\\n", b"NaN", b"-0", b"1e999", b"null"]
random_bytes = st.one_of(st.binary(max_size=400), mutated_bytes())


def to_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


# --- (a) in process -------------------------------------------------------------------------------------------


@fuzz_settings(IN_PROCESS_EXAMPLES)
@given(body=mutated_requests())
def test_fuzz_mutated_valid_requests(body: dict[str, Any]) -> None:
    submit_and_check("mutated-valid-requests", to_bytes(body))


@fuzz_settings(IN_PROCESS_EXAMPLES)
@given(body=st.one_of(json_values, st.dictionaries(field_names, json_values, max_size=8)))
def test_fuzz_random_json_values(body: Any) -> None:
    submit_and_check("random-json-values", to_bytes(body))


@fuzz_settings(IN_PROCESS_EXAMPLES)
@given(body=random_bytes)
def test_fuzz_random_and_mutated_bytes(body: bytes) -> None:
    submit_and_check("random-and-mutated-bytes", body)


@fuzz_settings(IN_PROCESS_EXAMPLES)
@given(body=fhir_changes())
def test_fuzz_fhir_ish_resources(body: dict[str, Any]) -> None:
    submit_and_check("fhir-ish-resources", to_bytes(body))


@fuzz_settings(IN_PROCESS_EXAMPLES)
@given(body=patch_changes())
def test_fuzz_patches(body: dict[str, Any]) -> None:
    submit_and_check("patches", to_bytes(body))


def int_refuses(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


# No forged base64-JSON tokens here: the fake store's paging compares the token's "next" with its row keys and raises
# TypeError for a non-string one (a defect of the fake only); test_bad_input.py sends forged tokens to the real one.
query_values = st.one_of(
    st.sampled_from(
        [
            *("accepted", "completed", "completed' or 1 eq 1", "local-ehr", "x' or PartitionKey ne '", "Patient"),
            *("-1", "0", "1", "200", "201", "100000", "1.5", " 5", "e30", "garbage", "%%%", "W10"),
        ]
    ),
    st.text(max_size=30),
)


@fuzz_settings(IN_PROCESS_EXAMPLES)
@given(
    params=st.dictionaries(
        st.sampled_from(["status", "target", "resource", "pageSize", "continuationToken", "other"]), query_values
    )
)
def test_fuzz_list_query_parameters(params: dict[str, str]) -> None:
    """Reads: 200 or 400, never a 5xx; a 200 lists only what the filters ask for."""
    page_size = params.get("pageSize") or ""
    if page_size.isdigit() and int_refuses(page_size):
        return  # a known 500 ('²', > 4300 digits): pinned as xfail in test_bad_input.py, not counted here
    svc = services()
    for key in ("a", "b"):
        body = dict(TEMPLATES[2], resourceRef=f"Patient/fuzz-{key}")
        svc.api.submit({**SUBMIT_HEADERS, "Idempotency-Key": key}, to_bytes(body), BASE_URL)
    resp = svc.api.list_changes(AUDIT_HEADERS, params, BASE_URL)
    record("list-query-parameters", resp.status)
    assert resp.status in (200, 400), (resp.status, resp.body)
    if resp.status == 400:
        assert_problem(resp)
        return
    for item in resp.body["items"]:
        if params.get("status"):
            assert item["status"] == params["status"]
        if params.get("target"):
            assert item["target"] == params["target"]
        if params.get("resource"):
            assert item["resourceType"] == params["resource"]


# --- (b) through the running gateway --------------------------------------------------------------------------

VALID_AFTER = TEMPLATES[2] | {"dryRun": True}


@pytest.mark.e2e
@fuzz_settings(HTTP_EXAMPLES)
@given(
    body=st.one_of(
        mutated_requests(), fhir_changes(), patch_changes(), random_bytes, st.dictionaries(field_names, json_values)
    )
)
def test_fuzz_over_http(gateway: Gateway, body: Any) -> None:
    key = f"fuzz-http-{uuid.uuid4()}"
    resp = gateway.submit(to_bytes(body), key=key)
    record("over-http", resp.status_code)
    assert resp.status_code < 500, f"{resp.status_code} {resp.text} for {to_bytes(body)[:300]!r}"
    if resp.status_code == 202:
        return
    assert 400 <= resp.status_code < 500
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    problem = resp.json()
    assert problem["status"] == resp.status_code and (problem.get("detail") or problem.get("issues")), problem
    again = gateway.submit(VALID_AFTER, key=key)  # the key was not claimed by the refused request
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers, again.text
