"""Field-ownership policy: which calling app may change which elements of which resources at which target.

An optional ``reviewers`` list scopes the reading roles (Audit, Approve, Operate) to targets::

    reviewers:
      - principals: [u-900, review-portal]   # user object ids or app ids
        targets: [local-ehr]                 # or ["*"]

Without the section a reviewer sees every target; with it, only the targets of the entries naming them.

The policy is a YAML file, validated once at start-up; any problem raises ``ConfigurationError`` naming the field
and its line. Shape::

    version: "2026-11-25"            # recorded (with a short hash of the file) in the lineage of every decision
    sources:                         # one entry per source system, i.e. per calling app
      crm:                           # source name: letters, digits, '_', '-', '.'
        app_ids: [crm]               # caller app ids (Entra appid / azp, Easy Auth appid) acting as this source;
                                     # matched case-insensitively, each id in at most one source
        targets:
          local-ehr:                 # a target id from the targets file
            Patient:                 # a FHIR R4 resource type
              operations: [update, patch]     # any of create, update, patch; at least one
              require_base_version: false     # true: update/patch without baseVersion is denied
              when: "Patient.active = true"   # optional FHIRPath on the proposed resource; must be exactly true
              paths:                 # top-level element -> allow | approve | deny; anything unlisted is denied
                Patient.telecom: allow
                Patient.name: approve
                "*": deny            # the rule for every element not listed

Rule keys are ``Type.element`` (``Patient.telecom``), ``Type.element[x]`` for a choice element
(``Observation.value[x]``), a single choice variant (``Observation.valueQuantity``, more specific than
``Observation.value[x]``) or ``*``. The type must be the resource type the rules sit under and the element must exist
in FHIR R4. FHIRPath conditions are parsed strictly (syntax, known functions and their arity, root type) at load,
compiled once against the R4 model (so ``Observation.value`` finds ``valueQuantity``), and see ``%resource``.

A decision (:meth:`Policy.decide`) first checks source, target, resource type, operation, ``baseVersion`` and the
condition, any failing one denying with its reason; then maps each changed path to its top-level element
(``Patient.telecom[0].value`` -> ``Patient.telecom``) and takes the most specific rule: the exact element (or choice
variant), else its ``[x]`` choice, else ``*``, else deny. Any deny denies; else any approve needs approval; else
allow. No changed path at all allows. Reasons name paths, rules and config names, never element values.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from shared.core.errors import ConfigurationError, Issue
from shared.core.fhir_validation import R4_RESOURCE_TYPES
from shared.core.models import WireModel

__all__ = ["OPERATIONS", "Decision", "Policy", "PolicyDecision", "PolicyReason", "ReasonCode"]

Decision = Literal["allow", "approve", "deny"]
PolicyOperation = Literal["create", "update", "patch"]
OPERATIONS: Final[tuple[PolicyOperation, ...]] = ("create", "update", "patch")
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

MAX_REPORTED_PROBLEMS: Final = 20
_PATH_CACHE_MAX: Final = 4096

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_TARGET_ID = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"  # as in shared.core.targets
_RULE_KEY = re.compile(r"^(?P<type>[A-Z][A-Za-z0-9]*)\.(?P<element>[a-z][A-Za-z0-9]*)(?P<choice>\[x\])?$")
_CHANGED_PATH = re.compile(r"(?P<type>[A-Z][A-Za-z0-9]*)\.(?P<element>[a-z][A-Za-z0-9]*)(?P<choice>\[x\])?(?=$|[.\[])")


# --- decisions ----------------------------------------------------------------------------------------------


class PolicyReason(WireModel):
    """Why one path (or the request as a whole, ``path`` = resource type) got its rule."""

    model_config = ConfigDict(frozen=True)

    path: str
    rule: Decision
    code: ReasonCode
    message: str


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


# --- the file, as pydantic models -------------------------------------------------------------------------------

_SourceName = Annotated[str, StringConstraints(pattern=_NAME)]
_TargetId = Annotated[str, StringConstraints(pattern=_TARGET_ID)]
_AppId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]


class _ResourceRulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    operations: list[PolicyOperation] = Field(min_length=1)
    require_base_version: bool = False
    when: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] | None = None
    paths: dict[str, Decision] = Field(default_factory=dict)


class _SourceFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    app_ids: list[_AppId] = Field(min_length=1)
    targets: dict[_TargetId, dict[str, _ResourceRulesFile]] = Field(default_factory=dict)


class _ReviewerFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    principals: list[_AppId] = Field(min_length=1)
    targets: list[Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_\-]{0,63})$")]] = Field(
        min_length=1
    )


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")]
    sources: dict[_SourceName, _SourceFile]
    reviewers: list[_ReviewerFile] | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _date_as_text(cls, v: object) -> object:
        # An unquoted 2026-11-25 is a YAML date; take it as the text it was written as.
        return v.isoformat() if isinstance(v, date) else v


# --- the loaded policy ------------------------------------------------------------------------------------------

_Condition = Callable[[Mapping[str, Any], Mapping[str, Any] | None], list[Any]]


@dataclass(slots=True)
class _Rules:
    """One source x target x resource type, ready to decide."""

    source: str
    target: str
    resource_type: str
    operations: frozenset[str]
    require_base_version: bool
    condition: _Condition | None
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
            return _reason(changed_path, "deny", "invalid-path", f"{changed_path}: not an element path of {rt}")
        element = m["element"]
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
        for key in (*candidates, "*"):
            rule = self.paths.get(key)
            if rule is not None:
                verb = {"allow": "allowed by", "approve": "needs approval under", "deny": "denied by"}[rule]
                return _reason(path, rule, "path-rule", f"{path}: {verb} rule '{key}' of {self.where}")
        return _reason(path, "deny", "default-deny", f"{path}: no rule for this element for {self.where}; denied")


def _reason(path: str, rule: Decision, code: ReasonCode, message: str) -> PolicyReason:
    # Built from trusted values on the hot path: skip validation.
    return PolicyReason.model_construct(path=path, rule=rule, code=code, message=message)


class Policy:
    """A validated policy file. Build with :meth:`from_file` or :meth:`from_text`; immutable afterwards."""

    def __init__(
        self,
        *,
        version: str,
        rules: dict[tuple[str, str, str], _Rules],
        app_sources: dict[str, str],
        target_lines: dict[tuple[str, str], int],
        name: str,
        reviewers: list[tuple[frozenset[str], frozenset[str]]] | None = None,
        reviewer_lines: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self._reviewers = reviewers
        self._reviewer_lines = reviewer_lines or {}
        self.version: Final = version
        self.name: Final = name
        self._rules = rules
        self._app_sources = app_sources
        self._target_lines = target_lines
        self._sources = frozenset(s for s, _, _ in rules) | frozenset(app_sources.values())
        self._targets = frozenset((s, t) for s, t, _ in rules) | frozenset(target_lines)

    @classmethod
    def from_file(cls, path: Path) -> Policy:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"policy file {path}: cannot be read: {exc}") from exc
        return cls.from_text(text, name=str(path))

    @classmethod
    def from_text(cls, text: str, *, name: str = "<policy>") -> Policy:
        return _load(text, name)

    @property
    def sources(self) -> list[str]:
        return sorted(self._sources)

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

    def check_targets(self, known_target_ids: Collection[str]) -> None:
        """Raise ``ConfigurationError`` if the policy names a target the targets file does not define."""
        problems = [
            (line, f"sources.{s}.targets.{t}", f"target '{t}' is not in the targets file")
            for (s, t), line in sorted(self._target_lines.items(), key=lambda kv: kv[1])
            if t not in known_target_ids
        ] + [
            (line, f"{where}.targets", f"target '{t}' is not in the targets file")
            for (where, t), line in sorted(self._reviewer_lines.items(), key=lambda kv: kv[1])
            if t not in known_target_ids
        ]
        if problems:
            raise _configuration_error(self.name, problems)

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
            refusal = _check_condition(rules, proposed)
            if refusal is not None:
                return self._deny(source, resource_type, *refusal)

        if not changed_paths:
            reason = _reason(resource_type, "allow", "no-change", f"no element changed; nothing for {rules.where}")
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
        return self._decision("deny", [_reason(path, "deny", code, message)], source)

    def _decision(self, decision: Decision, reasons: list[PolicyReason], source: str | None) -> PolicyDecision:
        return PolicyDecision.model_construct(
            decision=decision, reasons=reasons, policy_version=self.version, source=source
        )


def _check_condition(rules: _Rules, proposed: Mapping[str, Any] | None) -> tuple[ReasonCode, str] | None:
    assert rules.condition is not None
    if proposed is None:
        return "condition-error", f"the 'when' condition of {rules.where} needs the proposed resource"
    try:
        result = rules.condition(proposed, {"resource": proposed, "rootResource": proposed})
    except Exception:  # fhirpathpy raises bare Exception for evaluation errors; the message may quote data
        return "condition-error", f"the 'when' condition of {rules.where} could not be evaluated"
    if result != [True]:
        return "condition-not-met", f"the proposed resource does not meet the 'when' condition of {rules.where}"
    return None


# --- loading ------------------------------------------------------------------------------------------------------

_Loc = tuple[str | int, ...]
_Problem = tuple[int, str, str]  # line, field, message


def _load(text: str, name: str) -> Policy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        raise ConfigurationError(f"policy file {name}: {where}: YAML syntax error: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"policy file {name}: YAML error: {exc}") from exc
    if root is None:
        raise ConfigurationError(f"policy file {name}: line 1: the file is empty; expected 'version' and 'sources'")
    if not isinstance(raw, dict):
        line = root.start_mark.line + 1
        raise _configuration_error(name, [(line, "(top level)", "must be a mapping with 'version' and 'sources'")])

    problems = [(line, "(top level)" if not loc else _field(loc), msg) for line, loc, msg in _duplicate_keys(root)]
    if problems:
        raise _configuration_error(name, problems)

    try:
        parsed = _PolicyFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            problems.append((_line(root, loc), _field(loc), _pydantic_message(err)))
        raise _configuration_error(name, problems) from exc

    checked = _compile(parsed)
    if checked.problems:
        raise _configuration_error(name, [(_line(root, loc), _field(loc), msg) for loc, msg in checked.problems])
    target_lines = {
        (s, t): _line(root, ("sources", s, "targets", t, "[key]"))
        for s, body in parsed.sources.items()
        for t in body.targets
    }
    reviewer_lines = {
        (f"reviewers[{i}]", target): _line(root, ("reviewers", i, "targets", j))
        for i, reviewer in enumerate(parsed.reviewers or [])
        for j, target in enumerate(reviewer.targets)
        if target != "*"
    }
    reviewers = None
    if parsed.reviewers is not None:
        reviewers = [(frozenset(p.casefold() for p in r.principals), frozenset(r.targets)) for r in parsed.reviewers]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return Policy(
        version=f"{parsed.version}+{digest}",
        rules=checked.rules,
        app_sources=checked.app_sources,
        target_lines=target_lines,
        name=name,
        reviewers=reviewers,
        reviewer_lines=reviewer_lines,
    )


@dataclass
class _Compiled:
    rules: dict[tuple[str, str, str], _Rules] = field(default_factory=dict)
    app_sources: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[_Loc, str]] = field(default_factory=list)


def _compile(parsed: _PolicyFile) -> _Compiled:
    out = _Compiled()
    for source, body in parsed.sources.items():
        for i, app_id in enumerate(body.app_ids):
            key = app_id.casefold()
            owner = out.app_sources.setdefault(key, source)
            if owner != source:
                out.problems.append(
                    (("sources", source, "app_ids", i), f"app id '{app_id}' is already used by source '{owner}'")
                )
        for target, by_type in body.targets.items():
            for resource_type, spec in by_type.items():
                loc: _Loc = ("sources", source, "targets", target, resource_type)
                if resource_type not in R4_RESOURCE_TYPES:
                    message = (
                        f"'{resource_type}' is not a FHIR R4 resource type{_suggest(resource_type, R4_RESOURCE_TYPES)}"
                    )
                    out.problems.append(((*loc, "[key]"), message))
                    continue
                elements, choices = _elements(resource_type)
                for key in spec.paths:
                    problem = _rule_key_problem(key, resource_type, elements, choices)
                    if problem:
                        out.problems.append(((*loc, "paths", key, "[key]"), problem))
                condition: _Condition | None = None
                if spec.when is not None:
                    condition, problem = _compile_condition(spec.when, resource_type)
                    if problem:
                        out.problems.append(((*loc, "when"), problem))
                choice_of = {v: base for base, variants in choices.items() for v in variants} | {b: b for b in choices}
                out.rules[(source, target, resource_type)] = _Rules(
                    source=source,
                    target=target,
                    resource_type=resource_type,
                    operations=frozenset(spec.operations),
                    require_base_version=spec.require_base_version,
                    condition=condition,
                    paths=dict(spec.paths),
                    choice_of=choice_of,
                )
    return out


def _rule_key_problem(key: str, resource_type: str, elements: frozenset[str], choices: Mapping[str, Any]) -> str:
    if key == "*":
        return ""
    m = _RULE_KEY.match(key)
    if m is None:
        return f"'{key}' is not a rule path: write '{resource_type}.element', '{resource_type}.element[x]' or '*'"
    if m["type"] != resource_type:
        return f"'{key}' names {m['type']}, but these rules are for {resource_type}"
    element = m["element"]
    if m["choice"]:
        if element in choices:
            return ""
        if element in elements:
            return f"'{key}': {resource_type}.{element} is not a choice element; write '{resource_type}.{element}'"
    elif element in choices:
        variant = f"{resource_type}.{choices[element][0]}"
        return f"'{key}' is a choice element; write '{key}[x]' (or one variant, such as '{variant}')"
    elif element in elements:
        return ""
    known = elements | {f"{c}[x]" for c in choices}
    return f"{resource_type} has no element '{element}'{_suggest(element, known)}"


def _suggest(word: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@cache
def _r4_model() -> dict[str, Any]:
    from fhirpathpy.models import models

    model: dict[str, Any] = models["r4"]
    return model


@cache
def _elements(resource_type: str) -> tuple[frozenset[str], dict[str, tuple[str, ...]]]:
    """Top-level element names of a resource type, and its choice elements with their variant names."""
    model = _r4_model()
    prefix = resource_type + "."
    elements = frozenset(p[len(prefix) :].split(".", 1)[0] for p in model["path2Type"] if p.startswith(prefix))
    choices: dict[str, tuple[str, ...]] = {}
    for path, types in model["choiceTypePaths"].items():
        if path.startswith(prefix) and "." not in path[len(prefix) :]:
            base = path[len(prefix) :]
            choices[base] = tuple(f"{base}{t[0].upper()}{t[1:]}" for t in types)
    return elements, choices


# --- FHIRPath -----------------------------------------------------------------------------------------------------


class _RaiseOnSyntaxError:
    """An ANTLR error listener (duck-typed: the runtime only calls these four) that stops at the first error."""

    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:  # noqa: N802
        raise _FhirPathSyntaxError(f"column {column + 1}: {msg}")

    def reportAmbiguity(self, *args: Any) -> None:  # noqa: N802
        pass

    def reportAttemptingFullContext(self, *args: Any) -> None:  # noqa: N802
        pass

    def reportContextSensitivity(self, *args: Any) -> None:  # noqa: N802
        pass


class _FhirPathSyntaxError(Exception):
    pass


def _parse_strict(expression: str) -> dict[str, Any]:
    """Parse to fhirpathpy's AST, failing on any syntax error or trailing text (fhirpathpy's own parse ignores both)."""
    from antlr4 import CommonTokenStream, InputStream, ParseTreeWalker
    from fhirpathpy.parser.ASTPathListener import ASTPathListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    listener = _RaiseOnSyntaxError()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.entireExpression()  # type: ignore[no-untyped-call]
    ast = ASTPathListener()  # type: ignore[no-untyped-call]
    ParseTreeWalker().walk(ast, tree)
    root: dict[str, Any] = ast.parentStack[0]
    return root


def _functions(node: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Every function call in the AST as (name, number of arguments)."""
    found: list[tuple[str, int]] = []
    stack = [node]
    while stack:
        n = stack.pop()
        children = n.get("children", [])
        if n.get("type") == "Functn" and children:
            params = [c for c in children[1:] if c.get("type") == "ParamList"]
            found.append((children[0].get("text", ""), len(params[0].get("children", [])) if params else 0))
        stack.extend(children)
    return found


def _root_types(node: Mapping[str, Any]) -> set[str]:
    """Resource type names a path starts from (``Observation`` in ``Observation.category``)."""
    found: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        children = n.get("children", [])
        if n.get("type") == "TermExpression" and children and children[0].get("type") == "InvocationTerm":
            member = children[0].get("children", [{}])[0]
            if member.get("type") == "MemberInvocation":
                text = member.get("children", [{}])[0].get("text", "")
                if text in R4_RESOURCE_TYPES:
                    found.add(text)
        stack.extend(children)
    return found


def _compile_condition(expression: str, resource_type: str) -> tuple[_Condition | None, str]:
    from fhirpathpy import compile as fhirpath_compile
    from fhirpathpy.engine.invocations import invocation_registry

    try:
        ast = _parse_strict(expression)
    except _FhirPathSyntaxError as exc:
        return None, f"FHIRPath syntax error at {exc}"
    except Exception as exc:  # the ANTLR runtime raises its own exception types (e.g. LexerNoViableAltException)
        return None, f"FHIRPath syntax error: {type(exc).__name__}"
    registry = cast(Mapping[str, Mapping[str, Any]], invocation_registry)
    for fn, arity in _functions(ast):
        spec = registry.get(fn)
        if spec is None:
            return None, f"FHIRPath function '{fn}()' is not known{_suggest(fn, registry)}"
        allowed = set(spec["arity"]) if "arity" in spec else None if "variadic" in spec else {0}
        if allowed is not None and arity not in allowed:
            counts = " or ".join(str(n) for n in sorted(allowed))
            return None, f"FHIRPath function '{fn}()' takes {counts} argument(s), not {arity}"
    others = _root_types(ast) - {resource_type}
    if others:
        return None, f"the condition starts from {', '.join(sorted(others))}, but these rules are for {resource_type}"
    condition: _Condition = fhirpath_compile(expression, _r4_model())
    try:
        empty = {"resourceType": resource_type}
        condition(empty, {"resource": empty, "rootResource": empty})
    except Exception as exc:
        return None, f"the condition fails on an empty {resource_type}: {exc}"
    return condition, ""


# --- reporting ----------------------------------------------------------------------------------------------------


def _duplicate_keys(root: yaml.Node) -> list[tuple[int, _Loc, str]]:
    """Keys given twice in one mapping: YAML loaders keep the last silently, which would hide a rule."""
    problems: list[tuple[int, _Loc, str]] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, _Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in first and key_node.tag != "tag:yaml.org,2002:merge":
                    message = f"'{key}' is given twice (first on line {first[key]})"
                    problems.append((key_node.start_mark.line + 1, (*loc, key), message))
                first.setdefault(key, key_node.start_mark.line + 1)
                stack.append((value_node, (*loc, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*loc, i)) for i, item in enumerate(node.value))
    return sorted(problems)


def _line(root: yaml.Node, loc: _Loc) -> int:
    """The 1-based line of the YAML node at ``loc`` (a pydantic error location), or of its nearest ancestor."""
    node = root
    mark = root.start_mark
    for part in loc:
        if part == "[key]":
            break
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
            if match is None:
                break
            mark, node = match[0].start_mark, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return mark.line + 1


def _field(loc: _Loc) -> str:
    """``sources.crm.targets.local-ehr.Patient.paths["Patient.name"]`` from a location tuple."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out or "(top level)"


def _pydantic_message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind in ("model_type", "dict_type"):
        return "must be a mapping"
    if kind == "list_type":
        return "must be a list"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "string_pattern_mismatch":
        return f"must match {err.get('ctx', {}).get('pattern', 'the allowed form')}"
    return str(err["msg"])


def _configuration_error(name: str, problems: Sequence[_Problem]) -> ConfigurationError:
    shown = sorted(problems)[:MAX_REPORTED_PROBLEMS]
    lines = [f"line {line}: {where}: {message}" for line, where, message in shown]
    more = len(problems) - len(shown)
    detail = f"policy file {name}: " + "; ".join(lines) + (f"; and {more} more" if more else "")
    issues = [Issue(path=where, code="invalid", message=f"line {line}: {message}") for line, where, message in shown]
    return ConfigurationError(detail, issues)
