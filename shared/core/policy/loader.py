"""Reading the policy file: YAML into compiled rules, every problem named by its field and line.

The file is validated once at start-up. Any problem (YAML syntax, a key given twice, a field of the wrong shape, an
unknown resource type or element, a bad ``when`` condition, an app id in two sources, and later a target the targets
file does not define) raises ``ConfigurationError`` naming the field and its line, at most
``MAX_REPORTED_PROBLEMS`` of them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from shared.core.errors import ConfigurationError, Issue
from shared.core.fhir_validation import R4_RESOURCE_TYPES
from shared.core.policy.conditions import Condition, compile_condition
from shared.core.policy.elements import rule_key_problem, suggest, top_level_elements
from shared.core.policy.rules import Rules
from shared.core.policy.schema import PolicyFile

__all__ = ["MAX_REPORTED_PROBLEMS", "LoadedPolicy", "check_known_targets", "load_file", "load_text"]

MAX_REPORTED_PROBLEMS: Final = 20

_Loc = tuple[str | int, ...]
_Problem = tuple[int, str, str]  # line, field, message


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated policy file, compiled; ``Policy`` is built from it."""

    version: str  # the file's version and a short hash of its text
    name: str
    rules: dict[tuple[str, str, str], Rules]
    app_sources: dict[str, str]  # casefolded app id -> source
    target_lines: dict[tuple[str, str], int]  # (source, target) -> line
    reviewers: list[tuple[frozenset[str], frozenset[str]]] | None  # (principals, targets); None: no section
    reviewer_lines: dict[tuple[str, str], int]  # ("reviewers[i]", target) -> line


def load_file(path: Path) -> LoadedPolicy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"policy file {path}: cannot be read: {exc}") from exc
    return load_text(text, str(path))


def load_text(text: str, name: str) -> LoadedPolicy:
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
        parsed = PolicyFile.model_validate(raw)
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
    return LoadedPolicy(
        version=f"{parsed.version}+{digest}",
        name=name,
        rules=checked.rules,
        app_sources=checked.app_sources,
        target_lines=target_lines,
        reviewers=reviewers,
        reviewer_lines=reviewer_lines,
    )


def check_known_targets(
    name: str,
    target_lines: Mapping[tuple[str, str], int],
    reviewer_lines: Mapping[tuple[str, str], int],
    known_target_ids: Collection[str],
) -> None:
    """Raise ``ConfigurationError`` if the policy names a target the targets file does not define."""
    problems = [
        (line, f"sources.{s}.targets.{t}", f"target '{t}' is not in the targets file")
        for (s, t), line in sorted(target_lines.items(), key=lambda kv: kv[1])
        if t not in known_target_ids
    ] + [
        (line, f"{where}.targets", f"target '{t}' is not in the targets file")
        for (where, t), line in sorted(reviewer_lines.items(), key=lambda kv: kv[1])
        if t not in known_target_ids
    ]
    if problems:
        raise _configuration_error(name, problems)


@dataclass
class _Compiled:
    rules: dict[tuple[str, str, str], Rules] = field(default_factory=dict)
    app_sources: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[_Loc, str]] = field(default_factory=list)


def _compile(parsed: PolicyFile) -> _Compiled:
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
                        f"'{resource_type}' is not a FHIR R4 resource type{suggest(resource_type, R4_RESOURCE_TYPES)}"
                    )
                    out.problems.append(((*loc, "[key]"), message))
                    continue
                elements, choices = top_level_elements(resource_type)
                for key in spec.paths:
                    problem = rule_key_problem(key, resource_type, elements, choices)
                    if problem:
                        out.problems.append(((*loc, "paths", key, "[key]"), problem))
                condition: Condition | None = None
                if spec.when is not None:
                    condition, problem = compile_condition(spec.when, resource_type)
                    if problem:
                        out.problems.append(((*loc, "when"), problem))
                choice_of = {v: base for base, variants in choices.items() for v in variants} | {b: b for b in choices}
                out.rules[(source, target, resource_type)] = Rules(
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
