"""Reading the policy file: YAML into compiled rules, every problem named by its field and line.

The file is validated once at start-up. Any problem (YAML syntax, a key given twice, a field of the wrong shape, an
unknown resource type or element, a bad ``when`` condition, an app id in two sources, and later a target the targets
file does not define, or one no source writes to) raises ``ConfigurationError`` naming the field and its line, at
most ``MAX_REPORTED_PROBLEMS`` of them.

A source's app ids can come from the environment: ``WRITEBACK_SOURCE_<NAME>_APP_IDS`` (the source name upper-cased,
anything but letters and digits as ``_``), comma-separated, replaces the file's ``app_ids``. A deployed policy cannot
know the Entra app ids of the apps that will call it, so it ships ``app_ids: []`` and the deployment sets them. A
non-empty setting of that form that names no source is an error (a typo would otherwise leave a source without
callers, silently).
"""

from __future__ import annotations

import hashlib
import os
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

__all__ = [
    "MAX_REPORTED_PROBLEMS",
    "LoadedPolicy",
    "app_ids_setting",
    "check_known_targets",
    "load_file",
    "load_text",
]

MAX_REPORTED_PROBLEMS: Final = 20
_MAX_APP_ID: Final = 256  # as the file's app_ids

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
    sources: frozenset[str] = frozenset()


def app_ids_setting(source: str) -> str:
    """``WRITEBACK_SOURCE_<NAME>_APP_IDS``: the setting whose comma-separated app ids replace ``source``'s."""
    return "WRITEBACK_SOURCE_" + re.sub(r"[^A-Za-z0-9]", "_", source).upper() + "_APP_IDS"


def load_file(path: Path, environ: Mapping[str, str] | None = None) -> LoadedPolicy:
    """Read and check the policy file; app ids from ``environ`` (the process's environment when None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"policy file {path}: cannot be read: {exc}") from exc
    return load_text(text, str(path), os.environ if environ is None else environ)


def load_text(text: str, name: str, environ: Mapping[str, str] | None = None) -> LoadedPolicy:
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

    checked = _compile(parsed, _app_id_overrides(name, parsed.sources, environ or {}))
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
        sources=frozenset(parsed.sources),
    )


def _app_id_overrides(
    name: str, sources: Collection[str], environ: Mapping[str, str]
) -> dict[str, tuple[list[str], str]]:
    """source -> (its app ids, the setting they came from), for each ``WRITEBACK_SOURCE_<NAME>_APP_IDS`` set."""
    owners: dict[str, list[str]] = {}
    for source in sorted(sources):
        owners.setdefault(app_ids_setting(source), []).append(source)
    found: dict[str, tuple[list[str], str]] = {}
    problems: list[Issue] = []
    for setting in sorted(k for k in environ if k.startswith("WRITEBACK_SOURCE_") and k.endswith("_APP_IDS")):
        ids = [part.strip() for part in environ[setting].split(",") if part.strip()]
        if not ids:
            continue  # an empty setting is no setting
        named = owners.get(setting)
        if named is None:
            known = ", ".join(sorted(sources)) or "none"
            problems.append(Issue(setting, "unknown-source", f"names no source of the policy (sources: {known})"))
        elif len(named) > 1:
            message = f"fits sources {' and '.join(named)} alike; rename one of them to tell them apart"
            problems.append(Issue(setting, "ambiguous-source", message))
        elif any(len(app_id) > _MAX_APP_ID for app_id in ids):
            problems.append(Issue(setting, "invalid", f"an app id is longer than {_MAX_APP_ID} characters"))
        else:
            found[named[0]] = (ids, setting)
    if problems:
        detail = f"policy file {name}: " + "; ".join(f"{i.path}: {i.message}" for i in problems)
        raise ConfigurationError(detail, problems)
    return found


def check_known_targets(
    name: str,
    target_lines: Mapping[tuple[str, str], int],
    reviewer_lines: Mapping[tuple[str, str], int],
    known_target_ids: Collection[str],
    *,
    written_targets: Collection[str] | None = None,
    targets_name: str = "the targets file",
) -> None:
    """Raise ``ConfigurationError`` unless the policy and the targets file (``targets_name``) agree: every target the
    policy names is defined there, and, given ``written_targets`` (the targets some source has rules for), every
    target defined there is written to by some source. The message names both files, the source and the target."""
    defines = f"the targets file (it defines: {', '.join(sorted(known_target_ids)) or 'none'})"
    problems = [
        (line, f"sources.{s}.targets.{t}", f"target '{t}' is not in {defines}")
        for (s, t), line in sorted(target_lines.items(), key=lambda kv: kv[1])
        if t not in known_target_ids
    ] + [
        (line, f"{where}.targets", f"target '{t}' is not in {defines}")
        for (where, t), line in sorted(reviewer_lines.items(), key=lambda kv: kv[1])
        if t not in known_target_ids
    ]
    unwritten = sorted(set(known_target_ids) - set(written_targets)) if written_targets is not None else []
    if not problems and not unwritten:
        return
    shown = problems[:MAX_REPORTED_PROBLEMS]
    parts = [f"policy line {line}: {where}: {message}" for line, where, message in shown]
    parts += [f"targets file: targets.{t}: no source of the policy has rules for target '{t}'" for t in unwritten]
    detail = (
        f"policy file {name} and targets file {targets_name} do not agree: "
        + "; ".join(parts)
        + ". WRITEBACK_POLICY_FILE and WRITEBACK_TARGETS_FILE must name a policy and the targets it was written for"
    )
    issues = [Issue(where, "unknown-target", f"policy line {line}: {message}") for line, where, message in shown]
    issues += [Issue(f"targets.{t}", "target-without-rules", f"in {targets_name}") for t in unwritten]
    raise ConfigurationError(detail, issues)


@dataclass
class _Compiled:
    rules: dict[tuple[str, str, str], Rules] = field(default_factory=dict)
    app_sources: dict[str, str] = field(default_factory=dict)
    problems: list[tuple[_Loc, str]] = field(default_factory=list)


def _compile(parsed: PolicyFile, app_ids: Mapping[str, tuple[list[str], str]]) -> _Compiled:
    out = _Compiled()
    for source, body in parsed.sources.items():
        ids, setting = app_ids.get(source, (body.app_ids, None))
        for i, app_id in enumerate(ids):
            key = app_id.casefold()
            owner = out.app_sources.setdefault(key, source)
            if owner != source:
                message = f"app id '{app_id}' is already used by source '{owner}'"
                owner_setting = app_ids.get(owner, ([], None))[1]
                message += f" (from {owner_setting})" if owner_setting else ""
                where: _Loc = ("sources", source, "app_ids", i)
                if setting is not None:
                    message += f"; this one from {setting}"
                    where = ("sources", source, "app_ids")
                out.problems.append((where, message))
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
