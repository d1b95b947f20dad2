"""The write to the target: version-checked, idempotent, attributable, with its Provenance, then verified.

- Every written resource carries two ``meta.tag`` codings: the change id and the source system, so a retry can
  tell "already written" from "someone else wrote", and an inbound sync can skip the gateway's own echoes.
- Update and patch carry ``If-Match`` with the version the plan read, or are not sent: a target whose
  ``capabilities.if_match`` is false, or that returned no version, gets a permanent ``if-match-unavailable`` error
  instead of an unconditional write that could overwrite changes made since the plan. Create carries
  ``If-None-Exist`` on the change tag, so a repeated create returns the first one.
- What is written is what the policy judged: the planned resource, or for a patch the planned elements (each
  changed element set whole, ``Plan.element_patch``); never the caller's own JSON Patch, whose operations a target
  may apply differently from the planner.
- Provenance: ``transaction`` sends the resource and its Provenance in one transaction Bundle (atomic; the target
  reference is unversioned because the version is assigned in the same transaction); ``after`` writes, then posts a
  Provenance naming the new version; ``none`` writes only.
- A write repeated after it succeeded (the activity ran twice) meets 412 or the existing create; the writer then
  reads the resource, finds its own change tag, and reports the write as done instead of failing.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from shared.core.errors import ConflictError, Issue, PermanentError
from shared.core.fhir_headers import parse_etag
from shared.core.models import ChangeRecord, Operation
from shared.core.planning import CHANGE_TAG_SYSTEM, SOURCE_TAG_SYSTEM, Plan, governed_meta
from shared.core.ports import FhirClient, FhirResponse
from shared.core.record_parts import ApprovalState
from shared.core.targets import TargetConfig

__all__ = [
    "CHANGE_TAG_SYSTEM",
    "SOURCE_TAG_SYSTEM",
    "FhirWriter",
    "IfMatchUnavailableError",
    "WriteOutcome",
    "build_provenance",
    "change_tag",
    "has_change_tag",
    "verify",
    "with_tags",
]

APP_IDENTIFIER_SYSTEM = "urn:writeback:app"
USER_IDENTIFIER_SYSTEM = "urn:writeback:user"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
GATEWAY_ROLE_SYSTEM = "urn:writeback:agent-role"


@dataclass(eq=False)
class IfMatchUnavailableError(PermanentError):
    """An update or patch that could not carry ``If-Match``: refused rather than sent unconditionally."""

    code: ClassVar[str] = "if-match-unavailable"
    title: ClassVar[str] = "The target cannot take a version-checked write"


@dataclass(frozen=True)
class WriteOutcome:
    version_id: str | None
    location: str | None
    resource_id: str | None
    written: dict[str, Any] | None
    provenance: str | None
    already_applied: bool
    downstream_calls: int


def change_tag(change_id: str) -> dict[str, str]:
    return {"system": CHANGE_TAG_SYSTEM, "code": change_id}


def with_tags(resource: dict[str, Any], change_id: str, source: str) -> dict[str, Any]:
    tagged = copy.deepcopy(resource)
    meta = dict(tagged.get("meta") or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    tags = [t for t in meta.get("tag", []) if t.get("system") not in (CHANGE_TAG_SYSTEM, SOURCE_TAG_SYSTEM)]
    tags += [change_tag(change_id), {"system": SOURCE_TAG_SYSTEM, "code": source}]
    meta["tag"] = tags
    tagged["meta"] = meta
    return tagged


def has_change_tag(resource: dict[str, Any] | None, change_id: str) -> bool:
    tags = ((resource or {}).get("meta") or {}).get("tag") or []
    return any(t.get("system") == CHANGE_TAG_SYSTEM and t.get("code") == change_id for t in tags)


def _approval_note(approval: ApprovalState | None) -> str | None:
    """What the Provenance says of an approval besides its verifier: the approver's comment, and for a decision
    made through a signed link by an unverified holder, that the name they gave is claimed, not verified."""
    if approval is None or approval.decision != "approved":
        return None
    notes = []
    if approval.verified_approver is None:
        claimed = f"; the name they gave, not verified: {approval.claimed_by}" if approval.claimed_by else ""
        notes.append(f"Approved through a signed approval link{claimed}")
    if approval.comment:
        notes.append(f"Approval comment: {approval.comment}")
    return ". ".join(notes) or None


def build_provenance(
    record: ChangeRecord,
    *,
    target_ref: str,
    recorded: datetime,
    reason: str | None,
    approver: str | None = None,
    approval_comment: str | None = None,
) -> dict[str, Any]:
    principal = record.requested_by
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
            "who": {
                "identifier": {"system": APP_IDENTIFIER_SYSTEM, "value": principal.app_id},
                "display": principal.app_id,
            },
        }
    ]
    if principal.user_id:
        agents.append(
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "enterer"}]},
                "who": {
                    "identifier": {"system": USER_IDENTIFIER_SYSTEM, "value": principal.user_id},
                    **({"display": principal.display_name} if principal.display_name else {}),
                },
            }
        )
    if approver:
        agents.append(
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "verifier"}]},
                "who": {"identifier": {"system": USER_IDENTIFIER_SYSTEM, "value": approver}},
            }
        )
    agents.append(
        {
            "type": {"coding": [{"system": GATEWAY_ROLE_SYSTEM, "code": "transmitter"}], "text": "transmitter"},
            "who": {
                "identifier": {"system": APP_IDENTIFIER_SYSTEM, "value": "writeback-gateway"},
                "display": "FHIR write-back gateway",
            },
        }
    )
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "meta": {"tag": [change_tag(record.change_id)]},
        "target": [{"reference": target_ref}],
        "recorded": recorded.isoformat(),
        "activity": {
            "coding": [
                {"system": DATA_OPERATION, "code": "CREATE" if record.operation is Operation.CREATE else "UPDATE"}
            ]
        },
        "agent": agents,
    }
    reasons = [{"text": reason}] if reason else []
    if approval_comment:
        reasons.append({"text": approval_comment})
    if reasons:
        provenance["reason"] = reasons
    return provenance


def verify(proposed: dict[str, Any], written: dict[str, Any], changed_paths: Sequence[str]) -> list[str]:
    """The changed element paths whose written value differs from the planned one (drift)."""
    drift = []
    for path in changed_paths:
        element = path.split(".", 1)[1] if "." in path else path
        if json.dumps(_element(proposed, element), sort_keys=True) != json.dumps(
            _element(written, element), sort_keys=True
        ):
            drift.append(path)
    return drift


def _element(resource: dict[str, Any], element: str) -> Any:
    """An element's value; for a choice element ``value[x]`` every ``valueQuantity``-like key; for ``meta.tag`` the
    governed part of meta's ``tag`` (without the gateway's own tags)."""
    if element.startswith("meta."):
        name = element[len("meta.") :]
        meta = governed_meta(resource.get("meta"))
        return {k: v for k, v in meta.items() if k in (name, f"_{name}")}
    if not element.endswith("[x]"):
        return resource.get(element)
    prefix = element[:-3]
    return {k: v for k, v in resource.items() if k.startswith(prefix) and k[len(prefix) : len(prefix) + 1].isupper()}


class FhirWriter:
    """Writes one planned change to one target."""

    def __init__(self, client: FhirClient, target: TargetConfig) -> None:
        self.client = client
        self.target = target

    def write(
        self,
        record: ChangeRecord,
        plan: Plan,
        *,
        source: str,
        recorded: datetime,
        reason: str | None,
        approval: ApprovalState | None = None,
    ) -> WriteOutcome:
        """Write ``plan`` (what the policy judged) to the target, with its Provenance; a patch is written as
        ``plan.element_patch()``, never as the caller's own operations."""
        approver = approval.verified_approver if approval else None
        comment = _approval_note(approval)
        resource = with_tags(plan.proposed, record.change_id, source)
        if record.operation is not Operation.CREATE:
            resource["id"] = plan.resource_id
        mode = self.target.provenance
        capabilities = self.target.capabilities
        if mode == "transaction" and capabilities.transactions and capabilities.conditional_create:
            return self._transaction(record, plan, resource, recorded, reason, approver, comment)
        return self._then_provenance(record, plan, resource, recorded, reason, approver, comment, mode == "none")

    def version_to_match(self, plan: Plan) -> str:
        """The version an update or patch carries in ``If-Match``; refuse one that could only go unconditionally."""
        where = f"targets.{self.target.id}.capabilities.if_match"
        if not self.target.capabilities.if_match:
            detail = (
                f"target '{self.target.id}' does not support If-Match ({where} is false): an update or patch "
                "could overwrite changes made at the target since the plan, so none is sent"
            )
            raise IfMatchUnavailableError(detail=detail, issues=[Issue(where, "not-supported", detail)])
        if not plan.current_version:
            detail = (
                f"target '{self.target.id}' returned no version for {plan.resource_type}/{plan.resource_id}: an "
                f"update or patch could not carry If-Match ({where}), so none is sent"
            )
            raise IfMatchUnavailableError(detail=detail, issues=[Issue(where, "no-version", detail)])
        return plan.current_version

    # -- transaction mode -----------------------------------------------------------------------------------

    def _transaction(
        self,
        record: ChangeRecord,
        plan: Plan,
        resource: dict[str, Any],
        recorded: datetime,
        reason: str | None,
        approver: str | None,
        comment: str | None,
    ) -> WriteOutcome:
        rtype = plan.resource_type
        if record.operation is Operation.CREATE:
            full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, CHANGE_TAG_SYSTEM + record.change_id)}"
            request: dict[str, Any] = {"method": "POST", "url": rtype, "ifNoneExist": self._tag_query(record)}
            target_ref = full_url
        else:
            full_url = f"{self.target.base_url}/{rtype}/{plan.resource_id}"
            request = {"method": "PUT", "url": f"{rtype}/{plan.resource_id}"}
            request["ifMatch"] = f'W/"{self.version_to_match(plan)}"'
            target_ref = f"{rtype}/{plan.resource_id}"
        provenance = build_provenance(
            record, target_ref=target_ref, recorded=recorded, reason=reason, approver=approver, approval_comment=comment
        )
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": full_url, "resource": resource, "request": request},
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": provenance,
                    "request": {"method": "POST", "url": "Provenance", "ifNoneExist": self._tag_query(record)},
                },
            ],
        }
        try:
            response = self.client.transaction(bundle)
        except ConflictError:
            return self._already_applied(record, plan, calls=1)
        entries = response.get("entry") or []
        if len(entries) < 2:
            raise PermanentError(detail="transaction response has fewer entries than the request")
        first, second = entries[0], entries[1]
        written = first.get("resource") if isinstance(first.get("resource"), dict) else None
        location = (first.get("response") or {}).get("location")
        version = (
            parse_etag((first.get("response") or {}).get("etag")) or _version_of(written) or _history_version(location)
        )
        written, reads = self._read_back(rtype, written, location, plan.resource_id)
        calls = 1 + reads
        prov_location = (second.get("response") or {}).get("location")
        return WriteOutcome(
            version_id=version,
            location=location,
            resource_id=(written or {}).get("id") or _id_from_location(location, rtype) or plan.resource_id,
            written=written,
            provenance=_strip_base(prov_location, self.target.base_url),
            already_applied=False,
            downstream_calls=calls,
        )

    # -- write, then Provenance ---------------------------------------------------------------------------

    def _then_provenance(
        self,
        record: ChangeRecord,
        plan: Plan,
        resource: dict[str, Any],
        recorded: datetime,
        reason: str | None,
        approver: str | None,
        comment: str | None,
        skip_provenance: bool,
    ) -> WriteOutcome:
        rtype = plan.resource_type
        try:
            response = self._write_resource(record, plan, resource)
        except ConflictError:
            return self._already_applied(record, plan, calls=1)
        written, reads = self._read_back(rtype, response.resource, response.location, plan.resource_id)
        calls = 1 + reads
        resource_id = (written or {}).get("id") or _id_from_location(response.location, rtype) or plan.resource_id
        version = response.version_id or _version_of(written)
        provenance_ref = None
        if not skip_provenance:
            target_ref = f"{rtype}/{resource_id}/_history/{version}" if version else f"{rtype}/{resource_id}"
            provenance = build_provenance(
                record,
                target_ref=target_ref,
                recorded=recorded,
                reason=reason,
                approver=approver,
                approval_comment=comment,
            )
            created = self._create_once(provenance, record.change_id)
            calls += 1
            provenance_ref = _provenance_ref(created)
        return WriteOutcome(
            version_id=version,
            location=response.location,
            resource_id=resource_id,
            written=written,
            provenance=provenance_ref,
            already_applied=False,
            downstream_calls=calls,
        )

    def _write_resource(self, record: ChangeRecord, plan: Plan, resource: dict[str, Any]) -> FhirResponse:
        if record.operation is Operation.CREATE:
            return self._create_once(resource, record.change_id)
        assert plan.resource_id is not None
        version = self.version_to_match(plan)
        if record.operation is Operation.PATCH and not plan.merged:
            # The planned elements, whole, and meta as planned with this change's tags ("add" replaces a member).
            meta_op = {"op": "add", "path": "/meta", "value": resource["meta"]}
            operations = [*plan.element_patch(), meta_op]
            return self.client.patch(plan.resource_type, plan.resource_id, operations, if_match=version)
        return self.client.update(resource, if_match=version)

    def _read_back(
        self, rtype: str, written: dict[str, Any] | None, location: str | None, planned_id: str | None
    ) -> tuple[dict[str, Any] | None, int]:
        """The written resource and the reads it took: the write's answer, else read back from the target.

        A target may answer a write without a body (no ``Prefer: return=representation``); the resource is then
        read by the id in ``location``, else the planned id. With neither, there is nothing to read.
        """
        if written is not None:
            return written, 0
        resource_id = _id_from_location(location, rtype) or planned_id
        if not resource_id:
            return None, 0
        return self.client.read(rtype, resource_id).resource, 1

    # -- a repeated write -----------------------------------------------------------------------------------

    def _already_applied(self, record: ChangeRecord, plan: Plan, *, calls: int) -> WriteOutcome:
        """After a 412: done already if the current version carries this change's tag, else a real conflict."""
        if plan.resource_id is None:
            raise ConflictError(detail="create conflicted at the target")
        current = self.client.read(plan.resource_type, plan.resource_id)
        calls += 1
        mine: dict[str, Any] | None = current.resource if has_change_tag(current.resource, record.change_id) else None
        version_id = current.version_id
        if mine is None:
            # Our earlier write may have landed (its answer lost) and been overwritten since: look in the history.
            calls += 1
            mine = next(
                (
                    v
                    for v in self.client.versions(plan.resource_type, plan.resource_id)
                    if has_change_tag(v, record.change_id)
                ),
                None,
            )
            if mine is None:
                raise ConflictError(detail=f"{plan.resource_type} changed at the target since it was read")
            version_id = _version_of(mine)
        provenance = None
        if self.target.provenance != "none":
            found = self.client.search("Provenance", {"_tag": f"{CHANGE_TAG_SYSTEM}|{record.change_id}"})
            calls += 1
            entries = found.get("entry") or []
            if entries:
                prov_id = (entries[0].get("resource") or {}).get("id")
                provenance = f"Provenance/{prov_id}" if prov_id else None
        return WriteOutcome(
            version_id=version_id,
            location=current.location if mine is current.resource else None,
            resource_id=plan.resource_id,
            written=mine,
            provenance=provenance,
            already_applied=True,
            downstream_calls=calls,
        )

    def _create_once(self, resource: dict[str, Any], change_id: str) -> FhirResponse:
        """Create, unless this change already created it: If-None-Exist on the change tag, or a search first."""
        tag_query = f"_tag={CHANGE_TAG_SYSTEM}|{change_id}"
        if self.target.capabilities.conditional_create:
            return self.client.create(resource, if_none_exist=tag_query)
        found = self.client.search(resource["resourceType"], {"_tag": f"{CHANGE_TAG_SYSTEM}|{change_id}"})
        entries = found.get("entry") or []
        if entries and isinstance(entries[0].get("resource"), dict):
            existing: dict[str, Any] = entries[0]["resource"]
            return FhirResponse(status=200, resource=existing, version_id=_version_of(existing))
        return self.client.create(resource)

    @staticmethod
    def _tag_query(record: ChangeRecord) -> str:
        return f"_tag={CHANGE_TAG_SYSTEM}|{record.change_id}"


def _version_of(resource: dict[str, Any] | None) -> str | None:
    meta = (resource or {}).get("meta") or {}
    value = meta.get("versionId")
    return str(value) if value is not None else None


def _history_version(location: str | None) -> str | None:
    if location and "/_history/" in location:
        return location.rsplit("/_history/", 1)[1].split("/")[0] or None
    return None


def _id_from_location(location: str | None, resource_type: str) -> str | None:
    if not location:
        return None
    path = location.split("/_history/")[0].rstrip("/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _strip_base(location: str | None, base_url: str) -> str | None:
    if not location:
        return None
    ref = location[len(base_url) + 1 :] if location.startswith(base_url + "/") else location
    return ref.split("/_history/")[0]


def _provenance_ref(response: FhirResponse) -> str | None:
    prov_id = (response.resource or {}).get("id") or _id_from_location(response.location, "Provenance")
    return f"Provenance/{prov_id}" if prov_id else None
