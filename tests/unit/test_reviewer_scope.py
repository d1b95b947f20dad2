"""Reviewers see the changes of their targets only, when the policy scopes them (object-level authorisation)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.api.access import Access
from shared.api.caller_identity import Authenticator, encode_easyauth_principal
from shared.api.changes_api import ChangesApi
from shared.app.journal import ChangeJournal, Step
from shared.core.models import ChangeRecord, ChangeStatus
from shared.core.policy import Policy
from shared.fakes.stores import FakeChangeStore
from tests.records import a_change_record

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
POLICY = """
version: "1"
sources:
  crm:
    app_ids: [crm]
    targets:
      ehr-a: {Patient: {operations: [update], paths: {Patient.telecom: allow}}}
      ehr-b: {Patient: {operations: [update], paths: {Patient.telecom: allow}}}
reviewers:
  - principals: [auditor-a]
    targets: [ehr-a]
  - principals: [u-everywhere]
    targets: ["*"]
"""


def record(change_id: str, target: str) -> ChangeRecord:
    return a_change_record(change_id, target=target, status=ChangeStatus.COMPLETED, at=NOW)


@pytest.fixture
def api() -> ChangesApi:
    journal = ChangeJournal(FakeChangeStore())
    for change_id, target in (("in-a", "ehr-a"), ("in-b", "ehr-b")):
        journal.open(record(change_id, target), Step("accepted"))
    policy = Policy.from_text(POLICY)
    access = Access(Authenticator("easyauth"), journal, policy)
    return ChangesApi(access, None, journal, known_targets={"ehr-a", "ehr-b"})  # type: ignore[arg-type]


def headers(app: str, user: str | None = None) -> dict[str, str]:
    return {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal(app, ["Writeback.Audit"], user_id=user)}


def test_scoped_reviewer_sees_only_their_target(api: ChangesApi) -> None:
    assert api.get_change(headers("auditor-a"), "in-a", "http://gw").status == 200
    assert api.get_change(headers("auditor-a"), "in-b", "http://gw").status == 404
    listed = api.list_changes(headers("auditor-a"), {}, "http://gw").body
    assert [c["changeId"] for c in listed["items"]] == ["in-a"]
    assert api.list_changes(headers("auditor-a"), {"target": "ehr-b"}, "http://gw").body == {"items": []}
    assert api.resource_lineage(headers("auditor-a"), "ehr-b", "Patient", "p1", {}).status == 404


def test_wildcard_reviewer_and_unlisted_reviewer(api: ChangesApi) -> None:
    everywhere = headers("some-portal", user="u-everywhere")
    assert api.get_change(everywhere, "in-b", "http://gw").status == 200
    nobody = headers("unlisted-portal")
    assert api.get_change(nobody, "in-a", "http://gw").status == 404
    assert api.list_changes(nobody, {}, "http://gw").body == {"items": []}
