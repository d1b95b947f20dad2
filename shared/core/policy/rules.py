"""One source x target x resource type's rules, compiled: the rule a changed path falls under, and why.

A changed path maps to its top-level element (``Patient.telecom[0].value`` -> ``Patient.telecom``) and takes the
most specific rule: the exact element (or choice variant), else its ``[x]`` choice, else ``*``, else deny.
An element of ``meta`` keeps its own path (``Patient.meta.tag``) and takes ``Patient.meta.tag``, else
``Patient.meta``, else ``*``, else deny; except a security label: ``Patient.meta.security`` is decided by a rule of
that name alone (neither ``Patient.meta`` nor ``*`` covers it), so no broad rule hands out the power to relabel.
Reasons name paths, rules and config names, never element values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import ConfigDict

from shared.core.models import WireModel
from shared.core.policy.conditions import Condition
from shared.core.policy.elements import governed_meta_elements
from shared.core.policy.schema import Decision

__all__ = ["PolicyReason", "ReasonCode", "Rules", "make_reason"]

ReasonCode = Literal[
    "path-rule",
    "default-deny",
    "invalid-path",
    "no-change",
    "unknown-source",
    "unknown-target",
    "unknown-resource-type",
    "operation-not-allowed",
    "base-version-required",
    "condition-not-met",
    "condition-error",
]

_PATH_CACHE_MAX: Final = 4096
_CHANGED_PATH = re.compile(r"(?P<type>[A-Z][A-Za-z0-9]*)\.(?P<element>[a-z][A-Za-z0-9]*)(?P<choice>\[x\])?(?=$|[.\[])")
_META_ELEMENT = re.compile(r"\.(?P<sub>[A-Za-z0-9]+)(?=$|[.\[])")
_EXPLICIT_ONLY: Final = frozenset({"security"})  # meta elements no broad rule ("Type.meta", "*") covers


class PolicyReason(WireModel):
    """Why one path (or the request as a whole, ``path`` = resource type) got its rule."""

    model_config = ConfigDict(frozen=True)

    path: str
    rule: Decision
    code: ReasonCode
    message: str


@dataclass(slots=True)
class Rules:
    """One source x target x resource type, ready to decide."""

    source: str
    target: str
    resource_type: str
    operations: frozenset[str]
    require_base_version: bool
    condition: Condition | None
    paths: dict[str, Decision]
    choice_of: dict[str, str]  # element or choice variant name -> its choice base, e.g. valueQuantity -> value
    reason_cache: dict[str, PolicyReason] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"source '{self.source}' on {self.target} {self.resource_type}"

    def reason_for(self, changed_path: str) -> PolicyReason:
        reason = self.reason_cache.get(changed_path)
        if reason is None:
            reason = self._reason(changed_path)
            if len(self.reason_cache) >= _PATH_CACHE_MAX:
                self.reason_cache.clear()
            self.reason_cache[changed_path] = reason
        return reason

    def _reason(self, changed_path: str) -> PolicyReason:
        rt = self.resource_type
        m = _CHANGED_PATH.match(changed_path)
        if m is None or m["type"] != rt:
            return make_reason(changed_path, "deny", "invalid-path", f"{changed_path}: not an element path of {rt}")
        element = m["element"]
        if element == "meta" and not m["choice"]:
            return self._meta_reason(changed_path, changed_path[m.end() :])
        base = self.choice_of.get(element)
        if m["choice"] or base == element:
            path = f"{rt}.{base or element}[x]"
            candidates = [path]
        elif base is not None:
            path = f"{rt}.{element}"
            candidates = [path, f"{rt}.{base}[x]"]
        else:
            path = f"{rt}.{element}"
            candidates = [path]
        return self._first_rule(path, [*candidates, "*"])

    def _meta_reason(self, changed_path: str, rest: str) -> PolicyReason:
        """The rule for a change inside ``meta``; ``rest`` is what follows ``Type.meta`` in the changed path."""
        rt = self.resource_type
        m = _META_ELEMENT.match(rest)
        if m is None:
            message = f"{changed_path}: a change to meta is decided per element, such as {rt}.meta.tag"
            return make_reason(changed_path, "deny", "invalid-path", message)
        sub = m["sub"]
        path = f"{rt}.meta.{sub}"
        if sub not in governed_meta_elements():
            message = f"{path}: not an element of meta a change may set"
            return make_reason(path, "deny", "invalid-path", message)
        if sub in _EXPLICIT_ONLY:
            return self._first_rule(path, [path], why=f"a security label needs a rule '{path}' of its own")
        return self._first_rule(path, [path, f"{rt}.meta", "*"])

    def _first_rule(self, path: str, candidates: list[str], why: str = "no rule for this element") -> PolicyReason:
        for key in candidates:
            rule = self.paths.get(key)
            if rule is not None:
                verb = {"allow": "allowed by", "approve": "needs approval under", "deny": "denied by"}[rule]
                return make_reason(path, rule, "path-rule", f"{path}: {verb} rule '{key}' of {self.where}")
        return make_reason(path, "deny", "default-deny", f"{path}: {why} for {self.where}; denied")


def make_reason(path: str, rule: Decision, code: ReasonCode, message: str) -> PolicyReason:
    # Built from trusted values on the hot path: skip validation.
    return PolicyReason.model_construct(path=path, rule=rule, code=code, message=message)
