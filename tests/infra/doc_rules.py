"""Rules from Microsoft's documentation, checked on the infra's parse tree, the app's bindings and the deployed config.

Each rule returns the problems it finds (an empty list: the rule holds), so tests run it on the real repository and
on planted violations. The rules:

- ``excluded_path_problems``: App Service Authentication matches an ``excludedPaths`` entry exactly, or by a trailing
  ``/*`` only (learn.microsoft.com/azure/app-service/configure-authentication-file-based; MicrosoftDocs/azure-docs
  issue 86514): any other ``*`` is a path that is never excluded.
- ``unguarded_index_problems``: ARM evaluates the ``scope``, ``name`` and parameters of a module (and the ``name``
  and ``scope`` of a resource) whose condition is false (Azure/bicep issues 11463, 2466, 8022), and every variable and
  output whatever the conditions: an array index there must be guarded (see the function for what counts).
- ``target_override_problems``: a ``WRITEBACK_TARGET_<ID>_BASE_URL`` setting overrides a target of the deployed
  targets file (``shared/core/targets.py``); one naming no target there overrides nothing.
- ``key_vault_role_problems``: a Key Vault reference resolves with the site's ``keyVaultReferenceIdentity``, which
  needs **Key Vault Secrets User** on the vault; a SMART key the gateway signs with in Key Vault (``kv:`` key_name)
  needs **Key Vault Crypto User** (learn.microsoft.com/azure/key-vault/general/rbac-guide).
- ``identity_connection_problems``: every identity-based connection the bindings and the app use has its settings
  (``__fullyQualifiedNamespace`` / ``__*ServiceUri``, ``__credential``, ``__clientId``) and the data roles Microsoft
  lists for it (learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-
  identity; the Service Bus and Durable Functions binding pages).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.infra.bicep_model import (
    BicepFile,
    Infra,
    RoleAssignment,
    interpolations,
    literal_text,
    parse_expression,
    satisfies,
    unwrap,
)

REPO = Path(__file__).resolve().parents[2]
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("

# --- (a) excludedPaths -------------------------------------------------------------------------------------------


def excluded_path_problems(excluded_paths: Iterable[str]) -> list[str]:
    problems = []
    for path in excluded_paths:
        if not path.startswith("/"):
            problems.append(f"excludedPaths {path!r}: not an absolute path")
        if "*" in path.removesuffix("/*"):
            problems.append(f"excludedPaths {path!r}: a wildcard other than a trailing /* never matches")
    return problems


# --- (b) array indexes ARM evaluates under a false condition ---------------------------------------------------


def unguarded_index_problems(infra: Infra) -> list[str]:
    """Every array index ARM evaluates whatever a condition says, that may be out of bounds.

    Checked: each variable and output; and the ``scope``, ``name`` and ``params`` of a module with an ``if``, and the
    ``scope`` and ``name`` of a resource with an ``if``. An index ``a[i]`` (and ``first(a)`` / ``last(a)``) there is
    **guarded** when one of these holds:

    1. it sits in a branch of a conditional ``(test) ? x : y`` whose test reads an input (a parameter, module or
       resource, followed through variables) that the array is built from: ARM evaluates only the branch taken
       (learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-logical#if). The rule checks
       that the test reads that input, not that the branch is the right one: a reviewer still reads it;
    2. the array is long enough whatever the input: a literal array with more than ``i`` items, or ``split(s, sep)``
       with ``i`` = 0 (split returns at least one item);
    3. in a module or resource with an ``if``: the array is ``split(s, sep)`` where ``s`` is (through variables) a
       conditional that chooses a placeholder string — one with at least ``i`` separators outside its
       interpolations, so at least ``i + 1`` parts — by a test reading an input the module's own condition reads (so
       the placeholder is what ARM evaluates when the module is off).
    """
    problems: list[str] = []
    for file in infra.files.values():
        for name, variable in file.variables.items():
            _check_indexes(file, variable["value"], f"{file.name} variable {name}", [], set(), problems)
        for name, output in file.outputs.items():
            _check_indexes(file, output.get("value"), f"{file.name} output {name}", [], set(), problems)
        for kind, declarations, fields in (
            ("module", file.modules, ("scope", "name", "params")),
            ("resource", file.resources, ("scope", "name")),
        ):
            for name, declaration in declarations.items():
                condition, _, body = unwrap(declaration["config"])
                if condition is None:
                    continue
                switch = _inputs(file, condition)
                for key in fields:
                    if key in body:
                        where = f"{file.name} {kind} {name} {key}"
                        _check_indexes(file, body[key], where, [], switch, problems)
    return problems


def _inputs(file: BicepFile, node: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """The parameters, modules and resources of this file an expression reads, through its variables."""
    out: set[str] = set()
    for name in set(file.identifiers(node)) - seen:
        if name in file.variables:
            out |= _inputs(file, file.variables[name]["value"], seen | {name})
        else:
            out.add(name)
    return out


def _value(file: BicepFile, node: Any) -> Any:
    """An expression with a variable reference replaced by the variable's value (repeatedly)."""
    seen: set[str] = set()
    while isinstance(node, str) and node in file.variables and node not in seen:
        seen.add(node)
        node = file.variables[node]["value"]
    return node


def _function(node: Any) -> tuple[str, list[Any]] | None:
    if isinstance(node, dict) and isinstance(node.get("function"), dict):
        return node["function"]["type"], list(node["function"].get("parameters", {}).values())
    return None


def _operator(node: Any) -> tuple[str, dict[str, Any]] | None:
    if isinstance(node, dict) and isinstance(node.get("operator"), dict):
        return node["operator"]["type"], dict(node["operator"].get("operands", {}))
    return None


def _min_length(file: BicepFile, array: Any, index: int, switch: set[str]) -> bool:
    """Whether ``array`` has more than ``index`` items whatever the inputs (guards 2 and 3)."""
    array = _value(file, array)
    if isinstance(array, list):
        return len(array) > index
    call = _function(array)
    if call is None or call[0] != "split":
        return False
    source, separator = call[1][0], call[1][1]
    if index == 0:
        return True
    if not isinstance(separator, str) or file.is_identifier(separator):
        return False
    source = _value(file, source)
    conditional = _operator(source)
    if conditional is None or conditional[0] != "conditional" or not switch:
        return False
    operands = conditional[1]
    if not _inputs(file, operands["condition"]) & switch:
        return False
    return any(
        isinstance(branch, str) and not file.is_identifier(branch) and literal_text(branch).count(separator) >= index
        for branch in (operands["true_value"], operands["false_value"])
    )


def _render(file: BicepFile, node: Any) -> str:
    if isinstance(node, str):
        return node if file.is_identifier(node) else repr(node)
    if isinstance(node, int):
        return str(node)
    operator = _operator(node)
    if operator and operator[0] == "index_accessor":
        return f"{_render(file, operator[1]['operand_1'])}[{_render(file, operator[1]['operand_2'])}]"
    if operator and operator[0] == "property_accessor":
        return f"{_render(file, operator[1]['operand_1'])}.{_render(file, operator[1]['operand_2']).strip(chr(39))}"
    call = _function(node)
    if call:
        index = node["function"].get("index")
        return f"{call[0]}(...)" + (f"[{_render(file, index)}]" if index is not None else "")
    return "<expression>"


def _check_indexes(
    file: BicepFile, node: Any, where: str, guards: list[set[str]], switch: set[str], problems: list[str]
) -> None:
    if isinstance(node, str):
        for expression in _interpolated(node):
            _check_indexes(file, expression, where, guards, switch, problems)
        return
    if isinstance(node, list):
        for item in node:
            _check_indexes(file, item, where, guards, switch, problems)
        return
    if not isinstance(node, dict):
        return
    operator = _operator(node)
    call = _function(node)
    access: tuple[Any, Any] | None = None
    if operator and operator[0] == "conditional":
        operands = operator[1]
        _check_indexes(file, operands["condition"], where, guards, switch, problems)
        test = _inputs(file, operands["condition"])
        for branch in ("true_value", "false_value"):
            _check_indexes(file, operands[branch], where, [*guards, test], switch, problems)
        return
    if operator and operator[0] == "index_accessor":
        access = (operator[1]["operand_1"], operator[1]["operand_2"])
    elif call and "index" in node["function"]:
        # f(...)[i]: pycep keeps the index inside the call
        function = {k: v for k, v in node["function"].items() if k != "index"}
        access = ({"function": function}, node["function"]["index"])
    elif call and call[0] in ("first", "last") and call[1]:
        access = (call[1][0], 0)
    if access is not None:
        array, index = access
        built_from = _inputs(file, array)
        guarded = any(guard & built_from for guard in guards) or (
            isinstance(index, int) and _min_length(file, array, index, switch)
        )
        # obj['name'] reads a property, not a position
        by_name = isinstance(index, str) and not file.is_identifier(index)
        if not guarded and not by_name:
            problems.append(f"{where}: {_render(file, node)} indexes an array that may be too short, unguarded")
    for value in node.values():
        _check_indexes(file, value, where, guards, switch, problems)


def _interpolated(text: str) -> Iterator[Any]:
    for expression in interpolations(text):
        yield parse_expression(expression)


# --- (c) target base URL overrides --------------------------------------------------------------------------------

TARGET_OVERRIDE = re.compile(r"^WRITEBACK_TARGET_(?P<id>[A-Z0-9_]+)_BASE_URL$")


def deployed_targets_file(infra: Infra, repo: Path) -> Path:
    """The targets file the deployed app reads: ``WRITEBACK_TARGETS_FILE`` as the infra sets it, else the default."""
    from shared.config import Settings

    setting = infra.app_settings().get("WRITEBACK_TARGETS_FILE")
    if setting is not None:
        file, value = setting
        if isinstance(value, str) and not file.is_identifier(value):
            return repo / value
    default = Settings.model_fields["targets_file"].default
    return repo / str(default)


def target_ids(targets_file: Path) -> list[str]:
    raw = yaml.safe_load(targets_file.read_text(encoding="utf-8")) or {}
    return [str(target_id) for target_id in (raw.get("targets") or {})]


def target_override_problems(infra: Infra, repo: Path = REPO) -> list[str]:
    from shared.core.targets import env_override_name

    targets_file = deployed_targets_file(infra, repo)
    if not targets_file.is_file():
        return [f"the deployed targets file {targets_file} does not exist"]
    overridable = {env_override_name(target_id): target_id for target_id in target_ids(targets_file)}
    relative = targets_file.relative_to(repo) if targets_file.is_relative_to(repo) else targets_file
    return [
        f"app setting {name} names no target of {relative} (it defines {sorted(overridable.values())})"
        for name in sorted(infra.app_settings())
        if TARGET_OVERRIDE.match(name) and name not in overridable
    ]


# --- shared: the app's identity and the roles it holds -------------------------------------------------------------


def identity_modules(infra: Infra) -> set[str]:
    """The modules whose outputs give the site its user-assigned identity (``module:<name>``)."""
    file, body = infra.site()
    assigned = body.get("identity", {}).get("userAssignedIdentities", {})
    roots: set[str] = set()
    for key in assigned:
        roots |= {r for r in infra.roots(file, key) if r.startswith("module:")}
    return roots


def _assignments_to_app(infra: Infra) -> list[RoleAssignment]:
    app = identity_modules(infra)
    return [a for a in infra.role_assignments() if a.principal & app]


def _granted(assignments: list[RoleAssignment], role: str, scope: set[str]) -> list[RoleAssignment]:
    return [a for a in assignments if satisfies(a.role, role) and a.scope & scope]


def _modules(roots: set[str]) -> set[str]:
    return {r for r in roots if r.startswith("module:")}


# --- (d) Key Vault uses and their roles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyUse:
    target: str
    vault_url: str
    key: str


def smart_keys_in_key_vault(targets_file: Path) -> list[KeyUse]:
    """The targets whose SMART Backend Services key is a Key Vault key (``auth.key_name: kv:...``)."""
    from shared.adapters.smart_backend import parse_key_name

    raw = yaml.safe_load(targets_file.read_text(encoding="utf-8")) or {}
    uses = []
    for target_id, body in (raw.get("targets") or {}).items():
        key_name = ((body or {}).get("auth") or {}).get("key_name")
        if isinstance(key_name, str) and key_name.startswith("kv:"):
            ref = parse_key_name(key_name)
            uses.append(KeyUse(str(target_id), str(ref.vault_url), str(ref.name)))
    return uses


def committed_default(infra: Infra, parameter: str) -> str | None:
    """A main.bicep parameter's committed value: the azd default in main.parameters.json (``${VAR=default}``), or
    the Bicep default when the parameters file does not map it. ``None`` when neither commits a value."""
    parameters_file = infra.root / "main.parameters.json"
    if parameters_file.is_file():
        entry = json.loads(parameters_file.read_text(encoding="utf-8"))["parameters"].get(parameter)
        if entry is not None:
            value = entry.get("value")
            match = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:=(?P<default>[^}]*))?\}", str(value))
            if match is None:
                return str(value)
            return match.group("default")
    default = infra.main.parameters.get(parameter, {}).get("default")
    return default if isinstance(default, str) else None


def key_vault_role_problems(infra: Infra, repo: Path = REPO) -> list[str]:
    problems: list[str] = []
    site_file, site = infra.site()
    app_roles = _assignments_to_app(infra)
    references = {
        name: (file, value)
        for name, (file, value) in infra.app_settings().items()
        if isinstance(value, str) and KEY_VAULT_REFERENCE in value
    }
    if references:
        reference_identity = site.get("properties", {}).get("keyVaultReferenceIdentity")
        if not _modules(infra.roots(site_file, reference_identity)) & identity_modules(infra):
            problems.append(
                "the site resolves Key Vault references with its user-assigned identity only when "
                "properties.keyVaultReferenceIdentity names it"
            )
    for name, (file, value) in sorted(references.items()):
        vaults = _modules(infra.roots(file, value))
        if not vaults:
            problems.append(f"app setting {name}: its Key Vault reference names no vault this infra creates")
        elif not _granted(app_roles, "Key Vault Secrets User", vaults):
            problems.append(f"app setting {name}: the identity has no Key Vault Secrets User on {sorted(vaults)}")

    targets_file = deployed_targets_file(infra, repo)
    uses = smart_keys_in_key_vault(targets_file) if targets_file.is_file() else []
    crypto = [a for a in app_roles if satisfies(a.role, "Key Vault Crypto User")]
    for use in uses:
        where = f"target {use.target} signs with Key Vault key {use.key!r}"
        if not crypto:
            problems.append(f"{where}: the identity holds no Key Vault Crypto User")
            continue
        granted_keys: set[str] = set()
        for assignment in crypto:
            for root in assignment.loop:
                if root.startswith("param:"):
                    committed = committed_default(infra, root.removeprefix("param:")) or ""
                    granted_keys |= {k.strip() for k in committed.split(",") if k.strip()}
        vault_wide = [a for a in crypto if not a.loop]
        if use.key not in granted_keys and not vault_wide:
            problems.append(
                f"{where}: the key is not among the keys granted Key Vault Crypto User "
                f"(committed: {sorted(granted_keys)})"
            )
    return problems


# --- (e) identity-based connections -------------------------------------------------------------------------------

CODE_DIRS = ("orchestrators", "activities")
HOST_STORAGE = "AzureWebJobsStorage"
# Microsoft's role lists: functions-reference#connecting-to-host-storage-with-an-identity (host: Blob Data Owner;
# Durable Functions: Blob, Queue and Table Data Contributor), functions-bindings-service-bus#grant-permission-to-the-
# identity (trigger: Data Receiver; output: Data Sender).
HOST_ROLES = ["Storage Blob Data Owner"]
DURABLE_ROLES = ["Storage Blob Data Contributor", "Storage Queue Data Contributor", "Storage Table Data Contributor"]
STORAGE_SETTINGS = ("blobServiceUri", "queueServiceUri", "tableServiceUri")
SERVICE_ROLE = {
    "blobServiceUri": "Storage Blob Data Contributor",
    "queueServiceUri": "Storage Queue Data Contributor",
    "tableServiceUri": "Storage Table Data Contributor",
}
DURABLE_DECORATORS = {"orchestration_trigger", "activity_trigger", "entity_trigger", "durable_client_input"}
NO_CONNECTION = {"route", "function_name", "http_type", "schedule", "timer_trigger"}


@dataclass(frozen=True)
class Binding:
    where: str
    decorator: str
    connection: str | None


def bindings(repo: Path = REPO) -> list[Binding]:
    """The app's trigger and binding decorators (``@bp.<name>(..., connection=...)``), read from the source."""
    files = [repo / "function_app.py", *(p for d in CODE_DIRS for p in sorted((repo / d).glob("*.py")))]
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute):
                    connection = next(
                        (
                            kw.value.value
                            for kw in decorator.keywords
                            if kw.arg == "connection"
                            and isinstance(kw.value, ast.Constant)
                            and isinstance(kw.value.value, str)
                        ),
                        None,
                    )
                    where = f"{path.relative_to(repo).as_posix()}:{node.name}"
                    found.append(Binding(where, decorator.func.attr, connection))
    return found


def durable_connection(repo: Path = REPO) -> str:
    host = json.loads((repo / "host.json").read_text(encoding="utf-8"))
    provider = host.get("extensions", {}).get("durableTask", {}).get("storageProvider", {})
    return str(provider.get("connectionName") or provider.get("connectionStringName") or HOST_STORAGE)


def app_connections() -> dict[str, set[str]]:
    """The identity-based connections the app's own SDK clients read (``shared/config.py`` aliases such as
    ``ServiceBusConnection__fullyQualifiedNamespace``): prefix -> the suffixes it reads."""
    from pydantic import AliasChoices

    from shared.config import Settings

    found: dict[str, set[str]] = {}
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        for choice in choices:
            if isinstance(choice, str) and "__" in choice:
                prefix, suffix = choice.split("__", 1)
                found.setdefault(prefix, set()).add(suffix)
    return found


def identity_connection_problems(infra: Infra, repo: Path = REPO) -> list[str]:
    problems: list[str] = []
    settings = infra.app_settings()
    app = identity_modules(infra)
    roles = _assignments_to_app(infra)

    def setting(name: str) -> tuple[BicepFile, Any] | None:
        return settings.get(name)

    def sources(name: str) -> set[str]:
        found = setting(name)
        return _modules(infra.roots(found[0], found[1])) if found else set()

    def literal(name: str) -> str | None:
        found = setting(name)
        if found and isinstance(found[1], str) and not found[0].is_identifier(found[1]):
            return found[1]
        return None

    def needs_identity_settings(connection: str, why: str) -> None:
        if (literal(f"{connection}__credential") or "").lower() != "managedidentity":
            problems.append(f"{why}: {connection}__credential must be 'managedidentity'")
        if not sources(f"{connection}__clientId") & app:
            problems.append(f"{why}: {connection}__clientId must be the app's user-assigned identity's client id")

    def needs_role(role: str, scope: set[str], why: str) -> None:
        if not scope:
            return
        if not _granted(roles, role, scope):
            problems.append(f"{why}: the identity needs {role} on {sorted(scope)}")

    # Host storage: the host itself, its timers, and Durable Functions when its task hub uses this connection.
    durable = durable_connection(repo)
    uses = bindings(repo)
    storage_connections = {HOST_STORAGE: "host storage"}
    if any(b.decorator in DURABLE_DECORATORS for b in uses):
        storage_connections.setdefault(durable, "Durable Functions task hub")
    for connection, why in storage_connections.items():
        missing = [f"{connection}__{s}" for s in STORAGE_SETTINGS if setting(f"{connection}__{s}") is None]
        if missing and setting(f"{connection}__accountName") is None:
            problems.append(f"{why}: {', '.join(missing)} (or {connection}__accountName) not set")
        needs_identity_settings(connection, why)
        accounts = set().union(*(sources(f"{connection}__{s}") for s in (*STORAGE_SETTINGS, "accountName")))
        required = (HOST_ROLES if connection == HOST_STORAGE else []) + (
            DURABLE_ROLES if connection == durable and any(b.decorator in DURABLE_DECORATORS for b in uses) else []
        )
        for role in required:
            needs_role(role, accounts, f"{why} ({connection})")

    for binding in uses:
        decorator = binding.decorator
        if decorator in DURABLE_DECORATORS or decorator in NO_CONNECTION:
            continue
        if decorator.startswith("service_bus_"):
            connection = binding.connection or "AzureWebJobsServiceBus"
            role = "Azure Service Bus Data Receiver" if "trigger" in decorator else "Azure Service Bus Data Sender"
            why = f"{binding.where} ({decorator}, connection {connection})"
            if setting(f"{connection}__fullyQualifiedNamespace") is None:
                problems.append(f"{why}: {connection}__fullyQualifiedNamespace not set")
            needs_identity_settings(connection, why)
            needs_role(role, sources(f"{connection}__fullyQualifiedNamespace"), why)
        elif binding.connection is not None:
            problems.append(f"{binding.where}: no rule for {decorator} (connection {binding.connection}): add one")

    # The app's own SDK clients (the publisher, the tables and payload blobs) use the same identity.
    client_id = [n for n in ("WRITEBACK_MANAGED_IDENTITY_CLIENT_ID", "AZURE_CLIENT_ID") if sources(n) & app]
    for prefix, suffixes in sorted(app_connections().items()):
        why = f"the app's {prefix} client"
        for suffix in sorted(suffixes):
            if setting(f"{prefix}__{suffix}") is None:
                problems.append(f"{why}: {prefix}__{suffix} not set")
                continue
            scope = sources(f"{prefix}__{suffix}")
            if suffix == "fullyQualifiedNamespace":
                needs_role("Azure Service Bus Data Sender", scope, why)
            elif suffix in SERVICE_ROLE:
                needs_role(SERVICE_ROLE[suffix], scope, why)
        if not client_id:
            problems.append(f"{why}: WRITEBACK_MANAGED_IDENTITY_CLIENT_ID must be the app's identity's client id")
    return problems
