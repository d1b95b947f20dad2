"""Intake: take a change request in, exactly once per (caller, Idempotency-Key), through an outbox.

Order of work, each step safe to repeat: validate (nothing stored on bad input) → claim the key (an insert that
fails if it exists: the atomic decision) → store the record and its ``accepted`` lineage event together → publish
the message (MessageId = change id). Those two Table round trips are all that comes before the ``202``: the
resource index is written by the first step of the pipeline, and the record is marked enqueued by the first
transition the pipeline makes (or by the sweeper). A crash anywhere leaves either nothing (before the claim) or a
claimed key whose change a retry with the same key completes; a record left accepted whose message went missing is
published again by the sweeper (MessageId de-duplication and the dispatcher make a second message harmless).

Idempotency follows the IETF httpapi Idempotency-Key draft and Stripe's practice: a missing key is 400; the same key
with the same request replays the original answer (``Idempotent-Replayed: true``); with a different request, 422;
while the first is still being taken in, 409.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from shared.app.journal import ChangeJournal, Step, utcnow
from shared.core.canonical import canonical_json, sha256_hex
from shared.core.change_ids import change_id_time, new_change_id
from shared.core.errors import (
    AlreadyExistsError,
    ConcurrencyError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    Issue,
    PayloadTooLargeError,
    RequestError,
    TargetNotReadyError,
    WritebackError,
)
from shared.core.faults import checkpoint
from shared.core.fhir_validation import validate_resource
from shared.core.models import (
    ChangeMessage,
    ChangeRecord,
    ChangeRequest,
    ChangeStatus,
    IdempotencyRecord,
    Operation,
    Principal,
)
from shared.core.ports import IdempotencyStore, MessagePublisher, PayloadStore, SweepState
from shared.core.problems import request_error_from
from shared.core.targets import TargetRegistry

log = logging.getLogger("writeback.intake")

IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class IntakeResult:
    change: ChangeRecord
    replayed: bool


def check_idempotency_key(key: str | None) -> str:
    if key is None or key == "":
        raise RequestError(
            "An Idempotency-Key header is required",
            issues=[Issue(HEADER, "required", "send a unique key (1-255 printable ASCII characters) per change")],
        )
    if not IDEMPOTENCY_KEY.match(key):
        raise RequestError(
            "The Idempotency-Key header is not valid",
            issues=[Issue(HEADER, "invalid", "1-255 printable ASCII characters")],
        )
    return key


MAX_JSON_DEPTH = 64


def _invalid_json(message: str) -> RequestError:
    return RequestError("The request body is not valid JSON", issues=[Issue("", "invalid-json", message)])


def _escape(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse(pointer: str, code: str, detail: str, message: str) -> RequestError:
    return RequestError(detail, issues=[Issue(pointer, code, message)])


def _check_values(data: Any) -> None:
    """Find what JSON text may hold but a change request must not, and name where it is (JSON pointer): NaN,
    Infinity and out-of-range numbers, unpaired surrogate escapes, nesting deeper than ``MAX_JSON_DEPTH``.
    Iterative, so a hostile document cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(data, "", 1)]
    while stack:
        item, pointer, level = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise _refuse(
                pointer,
                "invalid-json",
                "The request body holds a number JSON cannot carry",
                "NaN, Infinity and out-of-range numbers are not JSON",
            )
        if isinstance(item, str) and not _utf8_ok(item):
            raise _refuse(
                pointer, "invalid-json", "The request body holds an unpaired surrogate escape", "not a Unicode string"
            )
        if isinstance(item, dict | list):
            if level > MAX_JSON_DEPTH:
                raise _refuse(
                    pointer,
                    "too-deep",
                    f"The request body is nested deeper than {MAX_JSON_DEPTH} levels",
                    f"at most {MAX_JSON_DEPTH} levels of nesting",
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, value in pairs:
                if isinstance(key, str) and not _utf8_ok(key):
                    raise _refuse(
                        pointer,
                        "invalid-json",
                        "The request body holds an unpaired surrogate escape",
                        "a member name is not a Unicode string",
                    )
                stack.append((value, f"{pointer}/{_escape(key)}", level + 1))


def strict_json(body: bytes) -> Any:
    """RFC 8259 JSON in UTF-8 only (no BOM); NaN, Infinity, out-of-range numbers, unpaired surrogates and deep
    nesting refused with the place named. Anything wrong is a 400, never a 5xx."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_json("the body must be UTF-8") from None
    if text.startswith("\ufeff"):
        raise _invalid_json("the body must not start with a byte order mark")
    try:
        data = json.loads(text)
    except RecursionError:
        raise _invalid_json(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        where = f" at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise _invalid_json(f"not valid JSON{where}") from None
    _check_values(data)
    return data


def parse_change_request(body: bytes, targets: TargetRegistry) -> tuple[ChangeRequest, Any]:
    """The validated request and its parsed JSON; RequestError / FhirValidationError name what is wrong."""
    data = strict_json(body)
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object", issues=[Issue("", "type", "expected an object")])
    try:
        request = ChangeRequest.model_validate(data)
    except ValidationError as exc:
        raise request_error_from(exc) from None
    target = targets.entry(request.target)
    if target is None:
        raise RequestError(
            f"Unknown target {request.target!r}",
            issues=[Issue("/target", "unknown-target", f"known targets: {', '.join(targets.ids()) or 'none'}")],
        )
    allowed_types = target.capabilities.resource_types
    if allowed_types and request.resource_type not in allowed_types:
        where = "/resource/resourceType" if request.resource is not None else "/resourceRef"
        raise RequestError(
            f"Target {target.id!r} does not accept {request.resource_type} resources",
            issues=[Issue(where, "not-supported", f"supported: {', '.join(allowed_types)}")],
        )
    if request.operation.value not in target.capabilities.interactions:
        raise RequestError(
            f"Target {target.id!r} does not support {request.operation.value}",
            issues=[Issue("/operation", "not-supported", "the target does not allow this interaction")],
        )
    if request.resource is not None:
        validate_resource(request.resource, expected_type=request.resource_type)
    return request, data


class IntakeService:
    def __init__(
        self,
        *,
        idempotency: IdempotencyStore,
        journal: ChangeJournal,
        payloads: PayloadStore,
        publisher: MessagePublisher,
        targets: TargetRegistry,
        max_body_bytes: int,
        retention: timedelta,
        stale_after: timedelta = timedelta(seconds=30),
        sweep_state: SweepState,
        sweep_grace: timedelta,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.idempotency = idempotency
        self.journal = journal
        self.payloads = payloads
        self.publisher = publisher
        self.targets = targets
        self.max_body_bytes = max_body_bytes
        self.retention = retention
        self.stale_after = stale_after
        self.sweep_state = sweep_state
        self.sweep_grace = sweep_grace
        self._clock = clock
        self._new_id = new_id or (lambda: new_change_id(self._clock()))

    def submit(
        self, principal: Principal, key: str | None, body: bytes, *, traceparent: str | None = None
    ) -> IntakeResult:
        if len(body) > self.max_body_bytes:
            raise PayloadTooLargeError(f"The request body exceeds {self.max_body_bytes} bytes")
        key = check_idempotency_key(key)
        request, data = parse_change_request(body, self.targets)
        fingerprint = sha256_hex(canonical_json(data))
        problem = self.targets.problem(request.target)
        if problem is not None:
            # After validation (bad input is a 4xx whatever the target's state), before the claim: nothing is stored,
            # and the same key goes through once the target is configured. A key taken earlier still replays.
            if self.idempotency.get(principal.caller_key, key) is None:
                raise TargetNotReadyError(problem.detail, issues=[Issue("/target", problem.code, problem.detail)])
            return self._existing(principal, key, fingerprint, request, body, traceparent)
        now = self._clock()
        claim = IdempotencyRecord(
            caller=principal.caller_key,
            key=key,
            fingerprint=fingerprint,
            change_id=self._new_id(),
            created_at=now,
            expires_at=now + self.retention,
        )
        try:
            self.idempotency.claim(claim)
        except AlreadyExistsError:
            return self._existing(principal, key, fingerprint, request, body, traceparent)
        checkpoint("intake.after-claim")
        change = self._take_in(claim.change_id, principal, request, body, fingerprint, now, traceparent)
        return IntakeResult(change, replayed=False)

    def _existing(
        self,
        principal: Principal,
        key: str,
        fingerprint: str,
        request: ChangeRequest,
        body: bytes,
        traceparent: str | None,
    ) -> IntakeResult:
        existing = self.idempotency.get(principal.caller_key, key)
        if existing is None:
            raise IdempotencyKeyInUseError("The Idempotency-Key was released while this request was taken in; retry")
        if existing.fingerprint != fingerprint:
            raise IdempotencyKeyMismatchError(
                "This Idempotency-Key was used with a different request",
                issues=[Issue(HEADER, "reused", "use a new key for a different change")],
            )
        change = self.journal.store.get(existing.change_id)
        if change is not None:
            if change.status is ChangeStatus.ACCEPTED and not change.enqueued:
                # The first answer may have been lost between storing the record and publishing: publish again
                # (the message is de-duplicated on its MessageId, and the dispatcher starts a change once).
                self._publish(change, traceparent)
            return IntakeResult(change, replayed=True)
        if self._clock() - existing.created_at < self.stale_after:
            raise IdempotencyKeyInUseError("The first request with this Idempotency-Key is still being taken in")
        # The first attempt stopped part-way (a crash or a lost connection): finish it, under the same change id.
        log.info("resuming intake of change %s", existing.change_id)
        resumed = self._take_in(
            existing.change_id, principal, request, body, fingerprint, existing.created_at, traceparent, resume=change
        )
        return IntakeResult(resumed, replayed=True)

    def _take_in(
        self,
        change_id: str,
        principal: Principal,
        request: ChangeRequest,
        body: bytes,
        fingerprint: str,
        now: datetime,
        traceparent: str | None,
        *,
        resume: ChangeRecord | None = None,
    ) -> ChangeRecord:
        record = resume
        taken_at = change_id_time(change_id)
        if taken_at is None or self._clock() - taken_at > self.sweep_grace / 2:
            # Stored (or published) long after its id was taken: outside the sweeper's key range, so name it.
            self.sweep_state.mark_pending(change_id, self._clock())
        if record is None:
            payload = self.payloads.put(change_id, body)
            record = ChangeRecord(
                change_id=change_id,
                status=ChangeStatus.ACCEPTED,
                target=request.target,
                operation=request.operation,
                resource_type=request.resource_type,
                resource_id=request.resource_id if request.operation is not Operation.CREATE else None,
                requested_by=principal,
                submitted_at=now,
                updated_at=now,
                request_hash=fingerprint,
                payload=payload,
                reason_hash=sha256_hex(request.reason.encode("utf-8")) if request.reason else None,
                dry_run=request.dry_run,
                base_version=request.base_version,
            )
            accepted = Step(
                "accepted",
                {
                    "requestHash": fingerprint,
                    "payloadBytes": len(body),
                    "payloadStorage": payload.kind,
                    "operation": request.operation.value,
                    "resourceType": request.resource_type,
                    "baseVersion": request.base_version,
                    "dryRun": request.dry_run,
                },
                actor=principal.actor,
            )
            try:
                record = self.journal.open(record, accepted)
            except AlreadyExistsError:
                record = self.journal.load(change_id, fresh=True)
        checkpoint("intake.after-record")
        self._publish(record, traceparent)
        checkpoint("intake.after-publish")
        return record

    def _publish(self, record: ChangeRecord, traceparent: str | None) -> None:
        try:
            self.publisher.publish(
                ChangeMessage(change_id=record.change_id, target=record.target, traceparent=traceparent)
            )
        except WritebackError as exc:
            # Accepted all the same: the record is stored, and the sweeper publishes what stayed accepted.
            log.warning("publishing change %s failed (%s); the sweeper will retry", record.change_id, exc.code)

    def mark_enqueued(self, record: ChangeRecord) -> ChangeRecord:
        try:
            return self.journal.record(record, [Step("enqueued", {"messageId": record.change_id})], enqueued=True)
        except ConcurrencyError:
            # The orchestration got there first, which proves the message was delivered.
            return self.journal.load(record.change_id, fresh=True)
