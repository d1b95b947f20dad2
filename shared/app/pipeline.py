"""The steps of the write-back pipeline that the orchestrator's activities run.

- ``prepare``: load the request, index the resource, read the current version at the target (and the base version
  when the caller read an older one), plan the diff, take the policy decision, and move the change to ``writing``,
  ``awaiting_approval``, ``planned`` (dry run), ``completed`` (nothing to change), ``rejected`` or ``conflict``.
  ``prepare_and_write`` (the orchestration's first activity) goes on to ``write`` a change the policy allows, on the
  record it has just written: no second activity and no second read of the record (the ``writing`` transition
  stays, so that a step run again knows a write may have happened).
- ``write``: the version-checked write with its Provenance, the read-back check, then ``completed``.
- ``expire`` / ``fail``: the ends of the unhappy paths.

Every step is safe to run again (activities run at least once): a step that finds the change past the state it
handles returns what happened, and a write repeated after success recognises its own change tag. Each step ends
with ONE journal transition (record and its lineage events together). Step results carry ids and states only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Container
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pydantic import ValidationError

from shared.app.journal import ChangeJournal, Step, utcnow
from shared.app.writer import FhirWriter, verify
from shared.core.canonical import canonical_hash
from shared.core.errors import (
    AuthError,
    ConcurrencyError,
    ConflictError,
    FhirValidationError,
    ForbiddenError,
    Issue,
    NotFoundError,
    PermanentError,
    RequestError,
    RetryableError,
    TargetNotReadyError,
    WritebackError,
)
from shared.core.faults import checkpoint
from shared.core.models import ChangeRecord, ChangeRequest, ChangeStatus, Operation, ResourceChange
from shared.core.planning import PatchApplyError, Plan, PlanConflictError, plan_change, rebase
from shared.core.policy import Policy
from shared.core.ports import FhirClient, PayloadStore
from shared.core.problems import pointer
from shared.core.record_parts import ApprovalState, ChangePlan, ChangeResult, PlanConflict, StoredProblem
from shared.core.targets import TargetConfig, TargetRegistry
from shared.core.telemetry import conflicts, retries, write_latency

StepResult = dict[str, Any]
UNKNOWN_CHANGE = "unknown"
log = logging.getLogger("writeback.pipeline")
RUNNING_STATUSES = frozenset(s for s in ChangeStatus if not s.is_terminal)


class RetriesExhaustedError(PermanentError):
    title = "Retries exhausted"


class StepFailedError(PermanentError):
    code = "step-failed"
    title = "A step of the change failed"


def failure_summary(exc: BaseException) -> str:
    """An exception reduced to its type and, for a validation error, the field paths: never the values."""
    if isinstance(exc, ValidationError):
        paths = sorted({pointer(tuple(e.get("loc", ()))) or "/" for e in exc.errors(include_input=False)})
        return f"{type(exc).__name__} at {', '.join(paths)}"
    return type(exc).__name__


class PolicyDeniedError(ForbiddenError):
    code = "policy-denied"
    title = "Denied by the field-ownership policy"


BACKOFF_BASE_SECONDS = 2.0
MAX_MERGES_ON_CONFLICT = 3
BACKOFF_CAP_SECONDS = 300.0


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential backoff with jitter, never less than Retry-After."""
    backoff = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
    jittered = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security
    return float(round(max(jittered, retry_after or 0.0), 3))


def outcome(record: ChangeRecord) -> StepResult:
    return {"changeId": record.change_id, "status": record.status.value}


class WriteInput(NamedTuple):
    plan: Plan
    reason: str | None


class ChangePipeline:
    def __init__(
        self,
        *,
        journal: ChangeJournal,
        payloads: PayloadStore,
        targets: TargetRegistry,
        policy: Policy,
        fhir: Callable[[TargetConfig], FhirClient],
        approval_timeout: timedelta = timedelta(hours=72),
        approval_reminder: timedelta | None = None,
        notify_approvers: bool = False,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.approval_reminder = approval_reminder
        self.notify_approvers = notify_approvers
        self.journal = journal
        self.payloads = payloads
        self.targets = targets
        self.policy = policy
        self.fhir = fhir
        self.approval_timeout = approval_timeout
        self._clock = clock

    # --- shared plumbing ---------------------------------------------------------------------------------------

    def _run(
        self,
        change_id: str,
        step: Callable[[ChangeRecord], StepResult],
        handles: Container[ChangeStatus],
        attempt: int = 0,
    ) -> StepResult:
        """Run a step on the record (once more on a fresh one if it went stale).

        The cached record serves only when it is in a state the step ``handles``; otherwise the step would answer
        "nothing to do", and that is decided on the stored record (another instance may have moved the change).

        A transient downstream failure is not raised: the step answers ``retry`` with how long to wait (the larger of
        the target's ``Retry-After`` and an exponential backoff, with jitter), and the orchestration waits on a
        durable timer — so a throttled or broken target makes changes wait, not fail, until their deadline.
        """
        try:
            try:
                return step(self.journal.load(change_id, expect=handles))
            except ConcurrencyError:
                return step(self.journal.load(change_id, fresh=True))
        except NotFoundError:
            # A message naming no change (the dispatcher reads no record): nothing to do, nothing to retry.
            log.warning("change %s has no record: its orchestration ends", change_id)
            return {"changeId": change_id, "status": UNKNOWN_CHANGE}
        except RetryableError as exc:
            wait = retry_delay(attempt, exc.retry_after)
            record = self.journal.load(change_id)
            details = {"code": exc.code, "downstreamStatus": exc.downstream_status, "retryAfter": wait}
            retries.add(1, {"writeback.target": record.target, "writeback.code": exc.code})
            with contextlib.suppress(ConcurrencyError):
                # Lineage shows the wait, and the record's updatedAt shows the change is alive, not stuck.
                record = self.journal.record(record, [Step("waiting-to-retry", {**details, "attempt": attempt + 1})])
            return {"changeId": change_id, "status": record.status.value, "retry": True, **details}
        except WritebackError:
            raise
        except Exception as exc:
            # Not ours: its message may quote the values it choked on (pydantic's do), and an activity's exception
            # goes into the Durable history and the host's logs. Only its type and the field paths go on.
            raise StepFailedError(detail=failure_summary(exc)) from None

    def _request(self, record: ChangeRecord) -> ChangeRequest:
        return ChangeRequest.model_validate_json(self.payloads.get(record.payload))

    def _target(self, record: ChangeRecord) -> TargetConfig:
        problem = self.targets.problem(record.target)
        if problem is not None:
            # Not a wait: nothing changes until an operator configures the target, then replays the change.
            raise TargetNotReadyError(problem.detail, issues=[Issue("target", problem.code, problem.detail)])
        target = self.targets.get(record.target)
        if target is None:
            raise PermanentError(detail=f"target {record.target!r} is no longer configured")
        return target

    def _end(
        self, record: ChangeRecord, status: ChangeStatus, steps: list[Step], error: WritebackError, **updates: Any
    ) -> StepResult:
        steps = [*steps, Step(status.value, {"code": error.code, "issues": [i.path for i in error.issues]})]
        done = self.journal.record(record, steps, status=status, error=StoredProblem.of(error), **updates)
        return outcome(done)

    def _clash(
        self, record: ChangeRecord, steps: list[Step], exc: PlanConflictError, plan: ChangePlan | None, **updates: Any
    ) -> StepResult:
        """End in ``conflict`` with ``plan`` (or a new one) noting the paths that clashed."""
        conflict = PlanConflict(ours=exc.ours, theirs=exc.theirs, overlap=exc.overlap)
        noted = (plan or ChangePlan()).model_copy(update={"conflict": conflict})
        return self._end(record, ChangeStatus.CONFLICT, steps, exc, plan=noted, **updates)

    # --- prepare ---------------------------------------------------------------------------------------------

    def prepare(self, change_id: str, attempt: int = 0) -> StepResult:
        """Plan and decide; a change the policy allows stops at ``writing``."""
        return self._run(change_id, self._prepare, {ChangeStatus.ACCEPTED}, attempt)

    def prepare_and_write(self, change_id: str, attempt: int = 0) -> StepResult:
        """Plan and decide, and write a change the policy allows in the same step (the orchestration's first
        activity): on the record this step has just written, so without a second activity or a second read."""
        return self._run(change_id, lambda record: self._prepare(record, go_on=True), {ChangeStatus.ACCEPTED}, attempt)

    def _prepare(self, record: ChangeRecord, *, go_on: bool = False) -> StepResult:
        if record.status is not ChangeStatus.ACCEPTED:
            return outcome(record)
        request = self._request(record)
        if record.replan:
            # An approver chose to plan this change again on the target's current version, ignoring its base.
            request = request.model_copy(update={"base_version": None})
        steps = [Step("validating", {"operation": record.operation.value}, status=ChangeStatus.VALIDATING)]
        if record.resource_id:
            # Off the intake's critical path; an upsert of the same row, so a step run again repeats it harmlessly.
            self.journal.store.index_resource(
                ResourceChange(
                    target=record.target,
                    resource_type=record.resource_type,
                    resource_id=record.resource_id,
                    change_id=record.change_id,
                    at=record.submitted_at,
                )
            )
        try:
            target = self._target(record)
            client = self.fhir(target)
            current, current_version, base = self._read(client, target, request)
            plan = plan_change(request, current=current, current_version=current_version, base=base)
            if record.operation is not Operation.CREATE and not plan.is_noop:
                FhirWriter(client, target).version_to_match(plan)  # refused now, before anyone is asked to approve
        except PlanConflictError as exc:
            return self._clash(record, steps, exc, None, enqueued=True)
        except (PatchApplyError, FhirValidationError, RequestError) as exc:
            return self._end(record, ChangeStatus.REJECTED, steps, exc, enqueued=True)
        except (PermanentError, AuthError) as exc:
            return self._end(record, ChangeStatus.FAILED, steps, exc, enqueued=True)

        source = self.policy.source_for_app(record.requested_by.app_id)
        decision = self.policy.decide(
            source=source,
            target=record.target,
            resource_type=record.resource_type,
            operation=record.operation.value,
            changed_paths=plan.changed_paths,
            proposed=plan.proposed,
            base_version_given=request.base_version is not None,
        )
        reasons = [{"path": r.path, "rule": r.rule} for r in decision.reasons]
        plan_body = ChangePlan(
            base_version=request.base_version,
            current_version=current_version,
            changed_paths=plan.changed_paths,
            diff=plan.diff,
            merged=plan.merged,
            downstream_paths=plan.downstream_paths,
            decision=decision.decision,
            reasons=decision.to_wire()["reasons"],
            policy_version=decision.policy_version,
            source=source,
        )
        steps += [
            Step(
                "planned",
                {
                    "baseVersion": request.base_version,
                    "currentVersion": current_version,
                    "changedPaths": plan.changed_paths,
                    "diffHash": canonical_hash(plan.diff),
                    "merged": plan.merged,
                    "downstreamPaths": plan.downstream_paths,
                },
                status=ChangeStatus.VALIDATING,
            ),
            Step(
                "decided",
                {
                    "decision": decision.decision,
                    "reasons": reasons,
                    "policyVersion": decision.policy_version,
                    "source": source,
                },
                status=ChangeStatus.VALIDATING,
            ),
        ]
        if decision.decision == "deny":
            denied = [r for r in decision.reasons if r.rule == "deny"]
            error = PolicyDeniedError(
                "The policy does not let this source change these elements",
                issues=[Issue(r.path, "denied", r.message) for r in denied],
            )
            return self._end(record, ChangeStatus.REJECTED, steps, error, enqueued=True, plan=plan_body)
        if plan.is_noop:
            status = ChangeStatus.PLANNED if request.dry_run else ChangeStatus.COMPLETED
            result = ChangeResult(version_id=current_version, no_change=True, verified=True)
            done = self.journal.record(
                record,
                [*steps, Step(status.value, {"noChange": True})],
                status=status,
                plan=plan_body,
                result=result,
                enqueued=True,
            )
            return outcome(done)
        if request.dry_run:
            done = self.journal.record(
                record,
                [*steps, Step("planned", {"dryRun": True})],
                status=ChangeStatus.PLANNED,
                plan=plan_body,
                enqueued=True,
            )
            return outcome(done)
        write_input = {"resource": plan.proposed, "reason": request.reason}
        plan_body.proposed = self.payloads.put(
            record.change_id, json.dumps(write_input, separators=(",", ":")).encode("utf-8"), name="proposed"
        )
        planned = WriteInput(self._plan_to_write(record, plan_body, plan.proposed), request.reason)
        if decision.decision == "approve":
            now = self._clock()
            expires = now + self.approval_timeout
            remind = now + self.approval_reminder if self.approval_reminder else None
            steps.append(Step("awaiting_approval", {"expiresAt": expires.isoformat()}))
            approval = ApprovalState(
                required=True,
                expires_at=expires,
                paths=[r.path for r in decision.reasons if r.rule == "approve"],
                round=record.sequence + len(steps),  # the awaiting_approval event's sequence
                diff_hash=canonical_hash(plan.diff),
            )
            done = self.journal.record(
                record,
                steps,
                status=ChangeStatus.AWAITING_APPROVAL,
                plan=plan_body,
                approval=approval,
                enqueued=True,
            )
            waiting: StepResult = {**outcome(done), "expiresAt": expires.isoformat(), "notify": self.notify_approvers}
            if remind is not None and remind < expires:
                waiting["remindAt"] = remind.isoformat()
            return waiting
        done = self.journal.record(
            record, [*steps, Step("writing", {})], status=ChangeStatus.WRITING, plan=plan_body, enqueued=True
        )
        checkpoint("prepare.after")
        return self._write(done, planned) if go_on else outcome(done)

    def _read(
        self, client: FhirClient, target: TargetConfig, request: ChangeRequest
    ) -> tuple[dict[str, Any] | None, str | None, dict[str, Any] | None]:
        if request.operation is Operation.CREATE:
            return None, None, None
        resource_id = request.resource_id
        assert resource_id is not None
        try:
            current = client.read(request.resource_type, resource_id)
        except NotFoundError:
            raise RequestError(
                f"{request.resource_type}/{resource_id} does not exist at the target",
                issues=[
                    Issue("/resourceRef" if request.resource_ref else "/resource/id", "not-found", "no such resource")
                ],
            ) from None
        base = None
        if request.base_version and request.base_version != current.version_id and target.capabilities.vread:
            try:
                base = client.vread(request.resource_type, resource_id, request.base_version).resource
            except NotFoundError:
                base = None
        return current.resource, current.version_id, base

    # --- write -----------------------------------------------------------------------------------------------

    def write(self, change_id: str, attempt: int = 0) -> StepResult:
        return self._run(change_id, self._write, {ChangeStatus.WRITING}, attempt)

    def _write_input(self, record: ChangeRecord) -> WriteInput:
        """The plan to write and the caller's reason: one payload read (two for a plan stored before the write
        input carried the reason, which then comes from the request)."""
        stored = record.plan
        if stored is None or stored.proposed is None:
            raise PermanentError(detail="the change has no planned resource to write")
        body = json.loads(self.payloads.get(stored.proposed))
        if "resourceType" in body:
            body = {"resource": body, "reason": self._request(record).reason}
        return WriteInput(self._plan_to_write(record, stored, body["resource"]), body.get("reason"))

    @staticmethod
    def _plan_to_write(record: ChangeRecord, stored: ChangePlan, proposed: dict[str, Any]) -> Plan:
        return Plan(
            operation=record.operation,
            resource_type=record.resource_type,
            resource_id=record.resource_id,
            base_version=stored.base_version,
            current_version=stored.current_version,
            proposed=proposed,
            diff=stored.diff,
            changed_paths=stored.changed_paths,
            merged=stored.merged,
            downstream_paths=stored.downstream_paths,
        )

    def _write(self, record: ChangeRecord, planned: WriteInput | None = None) -> StepResult:
        if record.status is not ChangeStatus.WRITING:
            return outcome(record)
        plan, reason = planned or self._write_input(record)
        try:
            target = self._target(record)
        except PermanentError as exc:
            return self._end(record, ChangeStatus.FAILED, [], exc)
        writer = FhirWriter(self.fhir(target), target)
        source = (record.plan.source if record.plan else None) or record.requested_by.app_id
        checkpoint("write.before")
        started = time.perf_counter()
        merges: list[Step] = []
        while True:
            try:
                written = writer.write(
                    record,
                    plan,
                    source=source,
                    recorded=self._clock(),
                    reason=reason,
                    approval=record.approval,
                )
                break
            except PlanConflictError as exc:
                return self._clash(record, merges, exc, record.plan)
            except ConflictError as exc:
                conflicts.add(1, {"writeback.target": record.target})
                if len(merges) >= MAX_MERGES_ON_CONFLICT:
                    return self._end(record, ChangeStatus.CONFLICT, merges, exc)
                try:
                    plan = self._merge_on_conflict(writer.client, target, plan)
                except PlanConflictError as clash:
                    return self._clash(record, merges, clash, record.plan)
                except (ConflictError, NotFoundError):
                    # The target no longer returns the version the plan read (or the resource): a human decides.
                    cannot = ConflictError(detail="the target changed and cannot return the version the plan read")
                    return self._end(record, ChangeStatus.CONFLICT, merges, cannot)
                merges.append(
                    Step(
                        "merged-on-conflict",
                        {"currentVersion": plan.current_version, "downstreamPaths": plan.downstream_paths},
                        status=ChangeStatus.WRITING,
                    )
                )
            except (PermanentError, AuthError, NotFoundError) as exc:
                return self._end(record, ChangeStatus.FAILED, merges, exc)
        write_latency.record((time.perf_counter() - started) * 1000, {"writeback.target": record.target})
        checkpoint("write.after")
        drift = verify(plan.proposed, written.written, plan.changed_paths) if written.written else []
        verified = written.written is not None and not drift
        steps = [
            *merges,
            Step(
                "written",
                {
                    "versionId": written.version_id,
                    "resourceId": written.resource_id,
                    "alreadyApplied": written.already_applied,
                    "ifMatch": plan.current_version,
                },
                status=ChangeStatus.WRITING,
            ),
            Step("verified", {"verified": verified, "driftPaths": drift}, status=ChangeStatus.VERIFYING),
        ]
        if drift:
            steps.append(Step("drift", {"paths": drift}, status=ChangeStatus.VERIFYING))
        if written.provenance:
            steps.append(Step("provenance", {"reference": written.provenance, "mode": target.provenance}))
        steps.append(Step("completed", {}))
        resource_id = record.resource_id or written.resource_id
        if record.operation is Operation.CREATE and resource_id:
            self.journal.store.index_resource(
                ResourceChange(
                    target=record.target,
                    resource_type=record.resource_type,
                    resource_id=resource_id,
                    change_id=record.change_id,
                    at=record.submitted_at,
                )
            )
        result = ChangeResult(
            version_id=written.version_id,
            location=written.location,
            resource_ref=f"{record.resource_type}/{resource_id}" if resource_id else None,
            provenance=written.provenance,
            verified=verified,
            no_change=False,
        )
        done = self.journal.record(record, steps, status=ChangeStatus.COMPLETED, result=result, resource_id=resource_id)
        return outcome(done)

    def _merge_on_conflict(self, client: FhirClient, target: TargetConfig, plan: Plan) -> Plan:
        """After a 412: re-read, and put our planned change on top of the new version if the changes are disjoint.

        Ours is what the plan meant to write on top of the version it read, whole (so an earlier merge is kept, and
        a meta element the plan removed stays removed); theirs is what changed at the target since. Overlap →
        PlanConflictError; no vread → ConflictError.
        """
        if not target.capabilities.vread or plan.current_version is None or plan.resource_id is None:
            raise ConflictError(detail="the target changed and cannot return the version the plan read")
        current = client.read(plan.resource_type, plan.resource_id)
        base = client.vread(plan.resource_type, plan.resource_id, plan.current_version).resource
        if current.resource is None or base is None:
            raise ConflictError(detail="the target changed and cannot return the version the plan read")
        return rebase(plan, current=current.resource, current_version=current.version_id, base=base)

    # --- unhappy ends ----------------------------------------------------------------------------------------

    def expire(self, change_id: str) -> StepResult:
        def step(record: ChangeRecord) -> StepResult:
            if record.status is not ChangeStatus.AWAITING_APPROVAL:
                return outcome(record)
            approval = (record.approval or ApprovalState()).model_copy(update={"decision": "expired"})
            done = self.journal.record(record, [Step("expired", {})], status=ChangeStatus.EXPIRED, approval=approval)
            return outcome(done)

        return self._run(change_id, step, {ChangeStatus.AWAITING_APPROVAL})

    def fail(self, change_id: str, detail: str) -> StepResult:
        def step(record: ChangeRecord) -> StepResult:
            if record.status.is_terminal:
                return outcome(record)
            error_body = StoredProblem.of(RetriesExhaustedError(detail=detail or "the change could not be written"))
            done = self.journal.record(
                record, [Step("failed", {"code": "retries-exhausted"})], status=ChangeStatus.FAILED, error=error_body
            )
            return outcome(done)

        return self._run(change_id, step, RUNNING_STATUSES)
