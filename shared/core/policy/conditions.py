"""The ``when`` conditions of the policy: FHIRPath on the proposed resource, compiled and evaluated via fhirpathpy.

Conditions are parsed strictly (syntax, known functions and their arity, root type) at load, compiled once against
the R4 model (so ``Observation.value`` finds ``valueQuantity``), and see ``%resource``. A condition holds only when
it evaluates to exactly ``true``; messages never quote the resource.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

from shared.core.fhir_validation import R4_RESOURCE_TYPES
from shared.core.policy.elements import r4_model, suggest

__all__ = ["Condition", "ConditionRefusal", "check_condition", "compile_condition"]

Condition = Callable[[Mapping[str, Any], Mapping[str, Any] | None], list[Any]]
ConditionRefusal = Literal["condition-not-met", "condition-error"]


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


def compile_condition(expression: str, resource_type: str) -> tuple[Condition | None, str]:
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
            return None, f"FHIRPath function '{fn}()' is not known{suggest(fn, registry)}"
        allowed = set(spec["arity"]) if "arity" in spec else None if "variadic" in spec else {0}
        if allowed is not None and arity not in allowed:
            counts = " or ".join(str(n) for n in sorted(allowed))
            return None, f"FHIRPath function '{fn}()' takes {counts} argument(s), not {arity}"
    others = _root_types(ast) - {resource_type}
    if others:
        return None, f"the condition starts from {', '.join(sorted(others))}, but these rules are for {resource_type}"
    condition: Condition = fhirpath_compile(expression, r4_model())
    try:
        empty = {"resourceType": resource_type}
        condition(empty, {"resource": empty, "rootResource": empty})
    except Exception as exc:
        return None, f"the condition fails on an empty {resource_type}: {exc}"
    return condition, ""


def check_condition(
    condition: Condition, where: str, proposed: Mapping[str, Any] | None
) -> tuple[ConditionRefusal, str] | None:
    """Why ``proposed`` does not meet ``condition`` (of the rules ``where`` names), or ``None`` when it does."""
    if proposed is None:
        return "condition-error", f"the 'when' condition of {where} needs the proposed resource"
    try:
        result = condition(proposed, {"resource": proposed, "rootResource": proposed})
    except Exception:  # fhirpathpy raises bare Exception for evaluation errors; the message may quote data
        return "condition-error", f"the 'when' condition of {where} could not be evaluated"
    if result != [True]:
        return "condition-not-met", f"the proposed resource does not meet the 'when' condition of {where}"
    return None
