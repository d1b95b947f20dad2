"""The policy's decisions: may this change be written (allow), only once approved (approve), or not at all (deny).

A decision (:meth:`Policy.decide`) first checks source, target, resource type, operation, ``baseVersion`` and the
condition, any failing one denying with its reason; then maps each changed path to its top-level element
(``Patient.telecom[0].value`` -> ``Patient.telecom``), or to its element of ``meta`` (``Patient.meta.security``),
and takes its most specific rule (see :mod:`shared.core.policy.rules`). Any deny denies; else any approve needs
approval; else allow. No changed path at all allows. Reasons name paths, rules and config names, never element
values.

The optional ``reviewers`` section scopes the reading roles (Audit, Approve, Operate) to targets
(:meth:`Policy.reviewer_targets`). Without the section a reviewer sees every target; with it, only the targets of
the entries naming them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import ConfigDict

from shared.core.models import WireModel
from shared.core.policy.conditions import check_condition
from shared.core.policy.loader import LoadedPolicy, check_known_targets, load_file, load_text
from shared.core.policy.rules import PolicyReason, ReasonCode, Rules, make_reason
from shared.core.policy.schema import OPERATIONS, Decision

__all__ = ["Policy", "PolicyDecision"]


class PolicyDecision(WireModel):
    """The outcome of :meth:`Policy.decide`; ``to_wire()`` gives the camelCase form kept in the plan and lineage."""

    model_config = ConfigDict(frozen=True)

    decision: Decision
    reasons: list[PolicyReason]
    policy_version: str
    source: str | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> PolicyDecision:
        return cls.model_validate(data)

    def paths(self, rule: Decision) -> list[str]:
        """The element paths that got ``rule`` (e.g. the ones an approver is asked about)."""
        return [r.path for r in self.reasons if r.rule == rule and r.code == "path-rule"]


class Policy:
    """A validated policy file. Build with :meth:`from_file` or :meth:`from_text`; immutable afterwards."""

    def __init__(
        self,
        *,
        version: str,
        rules: dict[tuple[str, str, str], Rules],
        app_sources: dict[str, str],
        target_lines: dict[tuple[str, str], int],
        name: str,
        reviewers: list[tuple[frozenset[str], frozenset[str]]] | None = None,
        reviewer_lines: dict[tuple[str, str], int] | None = None,
        sources: frozenset[str] = frozenset(),
    ) -> None:
        self._reviewers = reviewers
        self._reviewer_lines = reviewer_lines or {}
        self.version: Final = version
        self.name: Final = name
        self._rules = rules
        self._app_sources = app_sources
        self._target_lines = target_lines
        self._sources = sources | frozenset(s for s, _, _ in rules) | frozenset(app_sources.values())
        self._targets = frozenset((s, t) for s, t, _ in rules) | frozenset(target_lines)

    @classmethod
    def from_file(cls, path: Path, environ: Mapping[str, str] | None = None) -> Policy:
        """The policy of ``path``, app ids from ``WRITEBACK_SOURCE_<NAME>_APP_IDS`` in ``environ`` (the process's)."""
        return cls._from_loaded(load_file(path, environ))

    @classmethod
    def from_text(cls, text: str, *, name: str = "<policy>", environ: Mapping[str, str] | None = None) -> Policy:
        """The policy of ``text``; app ids from ``environ`` only when given."""
        return cls._from_loaded(load_text(text, name, environ))

    @classmethod
    def _from_loaded(cls, loaded: LoadedPolicy) -> Policy:
        return cls(
            version=loaded.version,
            rules=loaded.rules,
            app_sources=loaded.app_sources,
            target_lines=loaded.target_lines,
            name=loaded.name,
            reviewers=loaded.reviewers,
            reviewer_lines=loaded.reviewer_lines,
            sources=loaded.sources,
        )

    @property
    def sources(self) -> list[str]:
        return sorted(self._sources)

    @property
    def sources_without_app_ids(self) -> list[str]:
        """Sources no app acts as (``app_ids: []`` and no ``WRITEBACK_SOURCE_<NAME>_APP_IDS``): nobody's changes
        are judged by their rules until a deployment names their apps."""
        return sorted(self._sources - frozenset(self._app_sources.values()))

    def source_for_app(self, app_id: str) -> str | None:
        return self._app_sources.get(app_id.strip().casefold())

    def reviewer_targets(self, app_id: str, user_id: str | None) -> frozenset[str] | None:
        """The targets a reviewer (Audit / Approve / Operate) may see: None for all (no ``reviewers`` section)."""
        if self._reviewers is None:
            return None
        ids = {app_id.strip().casefold()} | ({user_id.strip().casefold()} if user_id else set())
        targets: set[str] = set()
        for principals, allowed in self._reviewers:
            if ids & principals:
                if "*" in allowed:
                    return None
                targets |= allowed
        return frozenset(targets)

    def check_targets(self, known_target_ids: Collection[str], *, targets_file: str = "the targets file") -> None:
        """Raise ``ConfigurationError`` unless this policy and the targets file agree: every target the policy names
        is defined there, and every target defined there has rules of some source. The message names both files,
        the source and the target."""
        check_known_targets(
            self.name,
            self._target_lines,
            self._reviewer_lines,
            known_target_ids,
            written_targets={t for _, t, _ in self._rules},
            targets_name=targets_file,
        )

    def decide(
        self,
        *,
        source: str | None,
        target: str,
        resource_type: str,
        operation: str,
        changed_paths: Sequence[str],
        proposed: dict[str, Any] | None,
        base_version_given: bool,
    ) -> PolicyDecision:
        rules = self._rules.get((source, target, resource_type)) if source is not None else None
        if rules is None:
            return self._deny(source, resource_type, *self._why_no_rules(source, target, resource_type))

        if operation not in rules.operations:
            allowed = ", ".join(op for op in OPERATIONS if op in rules.operations)
            message = f"operation '{operation}' is not allowed for {rules.where} (allowed: {allowed})"
            return self._deny(source, resource_type, "operation-not-allowed", message)

        if rules.require_base_version and operation in ("update", "patch") and not base_version_given:
            message = f"{rules.where} requires baseVersion on {operation}"
            return self._deny(source, resource_type, "base-version-required", message)

        if rules.condition is not None:
            refusal = check_condition(rules.condition, rules.where, proposed)
            if refusal is not None:
                return self._deny(source, resource_type, *refusal)

        if not changed_paths:
            reason = make_reason(resource_type, "allow", "no-change", f"no element changed; nothing for {rules.where}")
            return self._decision("allow", [reason], source)

        by_path: dict[str, PolicyReason] = {}
        for changed in changed_paths:
            reason = rules.reason_for(changed)
            by_path.setdefault(reason.path, reason)
        reasons = list(by_path.values())
        rule_set = {r.rule for r in reasons}
        decision: Decision = "deny" if "deny" in rule_set else "approve" if "approve" in rule_set else "allow"
        return self._decision(decision, reasons, source)

    def _why_no_rules(self, source: str | None, target: str, resource_type: str) -> tuple[ReasonCode, str]:
        if source is None:
            return "unknown-source", "the calling app is not a source system in the policy"
        if source not in self._sources:
            return "unknown-source", f"source '{source}' is not in the policy"
        if (source, target) not in self._targets:
            return "unknown-target", f"source '{source}' has no rules for target '{target}'"
        return "unknown-resource-type", f"source '{source}' has no rules for {resource_type} on target '{target}'"

    def _deny(self, source: str | None, path: str, code: ReasonCode, message: str) -> PolicyDecision:
        return self._decision("deny", [make_reason(path, "deny", code, message)], source)

    def _decision(self, decision: Decision, reasons: list[PolicyReason], source: str | None) -> PolicyDecision:
        return PolicyDecision.model_construct(
            decision=decision, reasons=reasons, policy_version=self.version, source=source
        )
