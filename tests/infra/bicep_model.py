"""A read-only model of the Bicep in infra/, built on pycep's parse tree, for the documentation rules.

pycep (the parser checkov uses) gives a JSON-like tree with two quirks this module smooths over:

- an identifier and a string literal both arrive as a Python ``str`` (``name: storageName`` and ``name: 'st'`` look
  alike), so a string is an identifier only when it names a parameter, variable, resource or module of its file;
- string interpolations stay raw (``'${parts[8]}/${parts[10]}'``), so their expressions are parsed here on demand.

It also misreads the precedence of ``?:`` against comparison and ``!`` (``a > 0 ? x : y`` arrives as
``a > (0 ? x : y)``): templates checked by these rules parenthesise a conditional's test.

What a value *comes from* is followed across files: a child module's parameter is resolved through the arguments
``main.bicep`` passes to that module, so ``AzureWebJobsStorage__blobServiceUri`` in api.bicep is known to come from
the ``storage`` module's outputs, and a role assignment in rbac.bicep scoped to ``storage`` (an ``existing``
resource named by a parameter) is known to act on that same module's account.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pycep

# Built-in Azure role definition ids, identical in every tenant (learn.microsoft.com/azure/role-based-access-control
# /built-in-roles).
ROLE_IDS = {
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Key Vault Crypto User": "12338af0-0e69-4776-bea7-57ae8d297424",
    "Key Vault Crypto Officer": "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
    "Key Vault Administrator": "00482a5a-887f-4fb3-b363-3b7fe8e74483",
    "FHIR Data Writer": "3f88fce4-5892-4214-ae73-ba5294559913",
    "FHIR Data Contributor": "5a1fc7df-4bf1-4951-a576-89034ee01acd",
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
}
ROLE_NAMES = {guid: name for name, guid in ROLE_IDS.items()}
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Data roles whose permissions include another's (a requirement of the key is met by any of the values).
SATISFIED_BY = {
    "Storage Blob Data Contributor": {"Storage Blob Data Contributor", "Storage Blob Data Owner"},
    "Azure Service Bus Data Sender": {"Azure Service Bus Data Sender", "Azure Service Bus Data Owner"},
    "Azure Service Bus Data Receiver": {"Azure Service Bus Data Receiver", "Azure Service Bus Data Owner"},
    "Key Vault Secrets User": {"Key Vault Secrets User", "Key Vault Secrets Officer", "Key Vault Administrator"},
    "Key Vault Crypto User": {"Key Vault Crypto User", "Key Vault Crypto Officer", "Key Vault Administrator"},
}


def satisfies(granted: str, required: str) -> bool:
    return granted in SATISFIED_BY.get(required, {required})


@cache
def _parser() -> pycep.BicepParser:
    # Building the parser compiles its grammar (about a second); one serves every parse.
    return pycep.BicepParser()


def parse_bicep(text: str) -> dict[str, Any]:
    tree: Any = _parser().parse(text=text)
    return dict(tree)


@cache
def parse_expression(text: str) -> Any:
    """One Bicep expression (for instance the inside of a ``${...}``) as pycep parses it. Cached: do not mutate."""
    return parse_bicep(f"var expression = {text}\n")["variables"]["expression"]["value"]


def interpolations(text: str) -> list[str]:
    """The expressions inside the ``${...}`` of a Bicep string, braces and quoted strings inside them respected."""
    found: list[str] = []
    i = 0
    while (start := text.find("${", i)) != -1:
        depth, j, quoted = 1, start + 2, False
        while j < len(text) and depth:
            ch = text[j]
            if ch == "'":
                quoted = not quoted
            elif not quoted and ch == "{":
                depth += 1
            elif not quoted and ch == "}":
                depth -= 1
            j += 1
        found.append(text[start + 2 : j - 1])
        i = j
    return found


def literal_text(text: str) -> str:
    """A Bicep string with its interpolations taken out: the characters every value of it contains."""
    out, i = [], 0
    for expression in interpolations(text):
        start = text.find("${" + expression + "}", i)
        out.append(text[i:start])
        i = start + len(expression) + 3
    out.append(text[i:])
    return "".join(out)


def unwrap(config: dict[str, Any]) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    """A resource or module body: (condition or None, loop or None, body). pycep nests ``if`` and ``for``."""
    loop = config.get("loop_type")
    if "config" in config and ("condition" in config or loop is not None):
        return config.get("condition"), loop, config["config"]
    return None, None, config


def loop_collection(loop: dict[str, Any]) -> Any:
    """The expression a ``for`` iterates over (pycep keeps an object loop's expression as a Python repr)."""
    detail = loop["detail"]
    raw = detail.get("array_name", detail.get("object_name"))
    if isinstance(raw, str) and raw.startswith("{"):
        return ast.literal_eval(raw)
    return raw


@dataclass
class BicepFile:
    name: str  # path relative to infra/, e.g. "app/rbac.bicep"
    tree: dict[str, Any]

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.tree.get("parameters", {}))

    @property
    def variables(self) -> dict[str, Any]:
        return dict(self.tree.get("variables", {}))

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.tree.get("resources", {}))

    @property
    def modules(self) -> dict[str, Any]:
        return dict(self.tree.get("modules", {}))

    @property
    def outputs(self) -> dict[str, Any]:
        return dict(self.tree.get("outputs", {}))

    @cached_property
    def symbols(self) -> frozenset[str]:
        return frozenset(self.parameters) | set(self.variables) | set(self.resources) | set(self.modules)

    def is_identifier(self, node: Any) -> bool:
        return isinstance(node, str) and node in self.symbols

    def identifiers(self, node: Any) -> Iterator[str]:
        """Every identifier an expression reads (interpolations included; property names are not identifiers)."""
        if isinstance(node, str):
            if node in self.symbols:
                yield node
            for expression in interpolations(node):
                yield from self.identifiers(parse_expression(expression))
        elif isinstance(node, list):
            for item in node:
                yield from self.identifiers(item)
        elif isinstance(node, dict):
            operator = node.get("operator")
            if isinstance(operator, dict) and operator.get("type") == "property_accessor":
                yield from self.identifiers(operator["operands"]["operand_1"])
                return
            for value in node.values():
                yield from self.identifiers(value)


@dataclass
class RoleAssignment:
    file: str
    name: str
    role: str
    scope: set[str]  # roots of the scope: "module:keyVault", ...
    principal: set[str]
    loop: set[str] = field(default_factory=set)  # roots of the collection a looped assignment iterates over
    conditional: bool = False


@dataclass
class Infra:
    root: Path
    files: dict[str, BicepFile]

    @classmethod
    def load(cls, root: Path) -> Infra:
        files = {
            path.relative_to(root).as_posix(): BicepFile(
                path.relative_to(root).as_posix(), parse_bicep(path.read_text(encoding="utf-8"))
            )
            for path in sorted(root.rglob("*.bicep"))
        }
        return cls(root, files)

    @property
    def main(self) -> BicepFile:
        return self.files["main.bicep"]

    def modules_using(self, file: BicepFile) -> list[str]:
        return [name for name, module in self.main.modules.items() if module.get("detail", {}).get("path") == file.name]

    def module_arguments(self, module: str) -> dict[str, Any]:
        _, _, body = unwrap(self.main.modules[module]["config"])
        return dict(body.get("params", {}))

    def roots(self, file: BicepFile, node: Any, _seen: frozenset[tuple[str, str]] = frozenset()) -> set[str]:
        """Where an expression's value comes from, across files: ``param:<main parameter>``, ``module:<name>``,
        ``resource:<main resource>``, or ``default:<file>:<parameter>`` for a child parameter left to its default."""
        out: set[str] = set()
        for name in set(file.identifiers(node)):
            key = (file.name, name)
            if key in _seen:
                continue
            seen = _seen | {key}
            if name in file.variables:
                out |= self.roots(file, file.variables[name]["value"], seen)
            elif name in file.parameters:
                if file is self.main:
                    out.add(f"param:{name}")
                    continue
                users = self.modules_using(file)
                for module in users:
                    arguments = self.module_arguments(module)
                    if name in arguments:
                        out |= self.roots(self.main, arguments[name], seen)
                    else:
                        out.add(f"default:{file.name}:{name}")
            elif name in file.modules:
                out.add(f"module:{name}")
            elif name in file.resources:
                if file is self.main:
                    out.add(f"resource:{name}")
                    continue
                _, loop, body = unwrap(file.resources[name]["config"])
                out |= self.roots(file, [body.get("name"), body.get("parent"), body.get("scope")], seen)
                if loop is not None:
                    out |= self.roots(file, loop_collection(loop), seen)
        return out

    def role_assignments(self) -> list[RoleAssignment]:
        found: list[RoleAssignment] = []
        for file in self.files.values():
            for name, resource in file.resources.items():
                if resource["type"].lower() != "microsoft.authorization/roleassignments" or resource.get("existing"):
                    continue
                condition, loop, body = unwrap(resource["config"])
                properties = body.get("properties", {})
                found.append(
                    RoleAssignment(
                        file=file.name,
                        name=name,
                        role=role_name(file, properties.get("roleDefinitionId")),
                        scope=self.roots(file, body.get("scope")),
                        principal=self.roots(file, properties.get("principalId")),
                        loop=self.roots(file, loop_collection(loop)) if loop is not None else set(),
                        conditional=condition is not None,
                    )
                )
        return found

    def site(self) -> tuple[BicepFile, dict[str, Any]]:
        """The Function App (the one ``Microsoft.Web/sites`` the infra creates) and its body."""
        [found] = [
            (file, unwrap(resource["config"])[2])
            for file in self.files.values()
            for resource in file.resources.values()
            if resource["type"].lower() == "microsoft.web/sites" and not resource.get("existing")
        ]
        return found

    def app_settings(self) -> dict[str, tuple[BicepFile, Any]]:
        """Every app setting the infra can set on the site, by name, with the file its value expression is in.

        Settings added under a condition (``cond ? {...} : {}``) are included: the rules ask what the infra *can*
        set."""
        file, body = self.site()
        expression = body.get("properties", {}).get("siteConfig", {}).get("appSettings")
        settings: dict[str, tuple[BicepFile, Any]] = {}
        if isinstance(expression, dict) and "loop_type" in expression:
            for owner, key, value in self._entries(file, loop_collection(expression["loop_type"])):
                settings[key] = (owner, value)
        elif isinstance(expression, list):
            for item in expression:
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    settings[item["name"]] = (file, item.get("value"))
        return settings

    def _entries(self, file: BicepFile, node: Any) -> Iterator[tuple[BicepFile, str, Any]]:
        """The key/value pairs an object expression can hold (variables, module arguments, union, conditionals)."""
        if isinstance(node, dict) and "function" not in node and "operator" not in node:
            for key, value in node.items():
                yield file, key, value
        elif isinstance(node, dict) and "function" in node:
            for argument in node["function"].get("parameters", {}).values():
                yield from self._entries(file, argument)
        elif isinstance(node, dict) and "operator" in node:
            for operand in node["operator"].get("operands", {}).values():
                yield from self._entries(file, operand)
        elif isinstance(node, str) and node in file.variables:
            yield from self._entries(file, file.variables[node]["value"])
        elif isinstance(node, str) and node in file.parameters and file is not self.main:
            for module in self.modules_using(file):
                argument = self.module_arguments(module).get(node)
                if argument is not None:
                    yield from self._entries(self.main, argument)


def role_name(file: BicepFile, expression: Any) -> str:
    """The built-in role a roleDefinitionId expression names (a GUID literal, or a variable holding one)."""
    for text in _strings(expression):
        if GUID.match(text):
            return ROLE_NAMES.get(text, text)
        value = file.variables.get(text, {}).get("value")
        if isinstance(value, str) and GUID.match(value):
            return ROLE_NAMES.get(value, value)
    raise AssertionError(f"{file.name}: no role definition GUID in {expression!r}")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
