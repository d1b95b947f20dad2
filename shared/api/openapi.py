"""The gateway's API as an OpenAPI 2.0 (Swagger) document, for Power Automate / Logic Apps custom connectors.

Custom connectors accept Swagger 2.0 only. The document is built here, in code, from the same constants the API uses
(states, operations, the idempotency key's pattern and retention, page sizes, ``Retry-After``), so it cannot drift
from them. The request bodies' definitions are generated from the pydantic models that validate them
(``shared.api.swagger_schema``); the answers' are written here. ``docs/openapi.json`` is this document with a
placeholder host, and a test checks it is up to date.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel

from shared.api.caller_identity import ROLE_APPROVE, ROLE_AUDIT, ROLE_OPERATE, ROLE_SUBMIT
from shared.api.prefer import MAX_WAIT_SECONDS
from shared.api.requests import ApprovalRequest, CallbackBody, ReplayRequest, ResolveRequest
from shared.api.responses import (
    MAX_PAGE_SIZE,
    RETRY_AFTER_AWAITING_APPROVAL_SECONDS,
    RETRY_AFTER_RUNNING_SECONDS,
)
from shared.api.swagger_schema import REF_PREFIX, Schema, swagger_definitions
from shared.app.approval_links import TOKEN_HEADER
from shared.app.intake import IDEMPOTENCY_KEY
from shared.config import Settings
from shared.core.models import TERMINAL_STATUSES, ChangeRequest, ChangeStatus, Operation

API_VERSION = "1.0.0"
PLACEHOLDER_HOST = "<your-function-app>.azurewebsites.net"
AUTHORIZATION_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
TOKEN_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"  # noqa: S105 - a public URL, not a secret
SCOPE = "api://fhir-writeback-gateway/user_impersonation"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


def default_retention_hours() -> int:
    """``WRITEBACK_IDEMPOTENCY_RETENTION_HOURS``'s default (the document describes the shipped policy)."""
    default = Settings.model_fields["idempotency_retention_hours"].default
    assert isinstance(default, int)
    return default


def default_stale_after_seconds() -> int:
    default = Settings.model_fields["intake_stale_after_seconds"].default
    assert isinstance(default, int | float)
    return int(default)


def _ref(name: str) -> Schema:
    return {"$ref": REF_PREFIX + name}


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_HOSTS


# --- definitions ---------------------------------------------------------------------------------------------------


# The request bodies, each under the name the document gives it; their definitions are generated from these models.
REQUEST_BODIES: dict[str, type[BaseModel]] = {
    "ChangeRequest": ChangeRequest,
    "ApprovalDecision": ApprovalRequest,
    "ApprovalCallback": CallbackBody,
    "Resolve": ResolveRequest,
    "ReplayRequest": ReplayRequest,
}


def _definitions() -> dict[str, Schema]:
    """The request bodies' definitions (generated from their models), then the responses' (written here)."""
    return {**copy.deepcopy(_request_definitions()), **_response_definitions()}


@functools.cache
def _request_definitions() -> dict[str, Schema]:
    """Generated once per process: the models do not change while it runs, and generating costs ~20 ms."""
    return swagger_definitions(REQUEST_BODIES)


def _status_property() -> Schema:
    terminal = ", ".join(s.value for s in ChangeStatus if s in TERMINAL_STATUSES)
    return {
        "type": "string",
        "enum": [s.value for s in ChangeStatus],
        "description": f"The change's state. It has ended when it is one of: {terminal}.",
        "x-ms-summary": "Status",
    }


def _change_identity() -> dict[str, Schema]:
    """The properties, all required, that say which change an answer is about (the submit answer and the status)."""
    return {
        "changeId": {"type": "string", "x-ms-summary": "Change id", "description": "The change's id."},
        "status": _status_property(),
        "target": {"type": "string", "x-ms-summary": "Target", "description": "The target's id."},
        "operation": {"type": "string", "enum": [o.value for o in Operation], "x-ms-summary": "Operation"},
        "resourceType": {"type": "string", "x-ms-summary": "Resource type"},
    }


def _free_form(summary: str, description: str, *, visibility: str | None = None) -> Schema:
    """An object property whose members the document does not list (a plan, an error, an OperationOutcome...)."""
    schema: Schema = {"type": "object", "x-ms-summary": summary, "description": description}
    if visibility:
        schema["x-ms-visibility"] = visibility
    return schema


def _links() -> Schema:
    return {
        "type": "object",
        "description": "Absolute URLs of the change's status, approval and lineage resources.",
        "properties": {
            "self": {"type": "string", "description": "The status resource (poll it).", "x-ms-summary": "Status URL"},
            "approval": {
                "type": "string",
                "description": "Where to approve or reject.",
                "x-ms-summary": "Approval URL",
            },
            "lineage": {"type": "string", "description": "The change's lineage.", "x-ms-summary": "Lineage URL"},
        },
        "required": ["self"],
    }


def _response_definitions() -> dict[str, Schema]:
    identity = _change_identity()
    return {
        "Links": _links(),
        "Accepted": {
            "type": "object",
            "description": "The answer to a submission (the same for every replay of it).",
            "required": [*identity, "submittedAt", "links"],
            "properties": {
                **identity,
                "resourceRef": {"type": "string", "x-ms-summary": "Resource reference"},
                "submittedAt": {"type": "string", "format": "date-time", "x-ms-summary": "Submitted at"},
                "links": _ref("Links"),
            },
        },
        "ChangeStatus": {
            "type": "object",
            "description": "The status resource of a change.",
            "required": [*identity, "requestedBy", "submittedAt", "updatedAt", "dryRun", "payloadPurged", "links"],
            "properties": {
                **identity,
                "resourceRef": {
                    "type": "string",
                    "x-ms-summary": "Resource reference",
                    "description": "ResourceType/id (absent for a create before the id is known).",
                },
                "requestedBy": {
                    "type": "object",
                    "description": "The app (source system) and user that submitted the change.",
                    "x-ms-summary": "Requested by",
                    "properties": {
                        "app": {"type": "string", "x-ms-summary": "App id"},
                        "user": {"type": "string", "x-nullable": True, "x-ms-summary": "User id"},
                    },
                },
                "submittedAt": {"type": "string", "format": "date-time", "x-ms-summary": "Submitted at"},
                "updatedAt": {"type": "string", "format": "date-time", "x-ms-summary": "Updated at"},
                "dryRun": {"type": "boolean", "x-ms-summary": "Dry run"},
                "plan": _free_form(
                    "Plan", "The planned diff (paths, versions) and the policy decision.", visibility="advanced"
                ),
                "approval": _free_form(
                    "Approval", "The approval request and decision, when one was needed.", visibility="advanced"
                ),
                "result": _free_form("Result", "When completed: versionId, location, provenance, verified."),
                "error": _free_form("Error", "Why the change was rejected, failed, expired or is in conflict."),
                "payloadPurged": {
                    "type": "boolean",
                    "x-ms-summary": "Payload purged",
                    "description": (
                        "True once WRITEBACK_PAYLOAD_RETENTION_DAYS (default 30) have passed since the change ended: "
                        "its request body, planned resource, the values in the plan's diff (each operation keeps op "
                        "and path) and approval and resolution comments are gone; lineage, paths, hashes, versions "
                        "and actors stay. A purged change cannot be retried or resolved (409 payload-purged)."
                    ),
                },
                "payloadPurgedAt": {
                    "type": "string",
                    "format": "date-time",
                    "x-ms-summary": "Payload purged at",
                    "description": "When the payload was purged (absent until then).",
                    "x-ms-visibility": "advanced",
                },
                "links": _ref("Links"),
            },
        },
        "ChangeList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("ChangeStatus"), "x-ms-summary": "Changes"},
                "continuationToken": {
                    "type": "string",
                    "x-ms-summary": "Continuation token",
                    "description": "Pass it back to get the next page; absent on the last page.",
                },
            },
        },
        "LineageEvent": {
            "type": "object",
            "required": ["sequence", "event", "status", "at", "actor"],
            "properties": {
                "sequence": {"type": "integer", "x-ms-summary": "Sequence"},
                "event": {"type": "string", "x-ms-summary": "Event", "description": "e.g. accepted, planned, written."},
                "status": _status_property(),
                "at": {"type": "string", "format": "date-time", "x-ms-summary": "At"},
                "actor": {"type": "string", "x-ms-summary": "Actor"},
                "details": _free_form("Details", "Paths, hashes, versions and outcomes; never values."),
            },
        },
        "Lineage": {
            "type": "object",
            "description": "Every step of one change, in order.",
            "required": ["changeId", "events"],
            "properties": {
                "changeId": {"type": "string", "x-ms-summary": "Change id"},
                "events": {"type": "array", "items": _ref("LineageEvent"), "x-ms-summary": "Events"},
            },
        },
        "ResourceLineage": {
            "type": "object",
            "description": "Every change to one resource at one target, newest first.",
            "required": ["target", "resourceRef", "changes"],
            "properties": {
                "target": {"type": "string", "x-ms-summary": "Target"},
                "resourceRef": {"type": "string", "x-ms-summary": "Resource reference"},
                "changes": {
                    "type": "array",
                    "x-ms-summary": "Changes",
                    "items": {
                        "type": "object",
                        "required": ["changeId", "at"],
                        "properties": {
                            "changeId": {"type": "string", "x-ms-summary": "Change id"},
                            "at": {"type": "string", "format": "date-time", "x-ms-summary": "At"},
                        },
                    },
                },
                "continuationToken": {"type": "string", "x-ms-summary": "Continuation token"},
            },
        },
        "Issue": {
            "type": "object",
            "required": ["path", "code", "message"],
            "properties": {
                "path": {"type": "string", "x-ms-summary": "Path", "description": "The field (JSON pointer or name)."},
                "code": {"type": "string", "x-ms-summary": "Code", "description": "e.g. required, invalid."},
                "message": {"type": "string", "x-ms-summary": "Message"},
            },
        },
        "Problem": {
            "type": "object",
            "description": "An RFC 9457 problem (application/problem+json).",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string", "x-ms-summary": "Problem type", "description": "urn:writeback:problem:..."},
                "title": {"type": "string", "x-ms-summary": "Title"},
                "status": {"type": "integer", "x-ms-summary": "HTTP status"},
                "detail": {"type": "string", "x-ms-summary": "Detail"},
                "instance": {"type": "string", "x-ms-summary": "Instance", "x-ms-visibility": "advanced"},
                "issues": {
                    "type": "array",
                    "items": _ref("Issue"),
                    "x-ms-summary": "Issues",
                    "description": "Each problem with the request, naming the field.",
                },
                "operationOutcome": _free_form(
                    "OperationOutcome",
                    "The FHIR OperationOutcome, for FHIR validation failures.",
                    visibility="advanced",
                ),
            },
        },
        "ReplayResult": {
            "type": "object",
            "required": ["dryRun", "matched", "retried", "skipped"],
            "properties": {
                "dryRun": {"type": "boolean", "x-ms-summary": "Dry run"},
                "matched": {"type": "array", "items": {"type": "string"}, "x-ms-summary": "Matched change ids"},
                "retried": {"type": "array", "items": {"type": "string"}, "x-ms-summary": "Retried change ids"},
                "skipped": {"type": "array", "items": {"type": "string"}, "x-ms-summary": "Skipped change ids"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "dependencies"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"], "x-ms-summary": "Status"},
                "dependencies": {
                    "type": "object",
                    "x-ms-summary": "Dependencies",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["state"],
                        "properties": {
                            "state": {"type": "string", "enum": ["ok", "unavailable"], "x-ms-summary": "State"},
                            "reason": {"type": "string", "x-ms-summary": "Reason"},
                            "detail": {"type": "string", "x-ms-summary": "Detail"},
                            "targets": {
                                "type": "object",
                                "description": "For targets: each target's state (reason not-configured or "
                                "loopback-in-azure when it is not ready).",
                                "additionalProperties": {"type": "object"},
                            },
                            "sourcesWithoutAppIds": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "For policy: sources no app acts as yet.",
                            },
                        },
                    },
                },
            },
        },
    }


# --- parameters and responses --------------------------------------------------------------------------------------


def _idempotency_key(retention_hours: int) -> Schema:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": True,
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": IDEMPOTENCY_KEY.pattern,
        "x-ms-summary": "Idempotency key",
        "x-ms-visibility": "important",
        "description": (
            "A unique key per change (e.g. a GUID; 1-255 printable ASCII characters), scoped to the calling app and "
            f"user and kept {retention_hours} hours. The same key with the same request answers the original 202 "
            "again with Idempotent-Replayed: true; with a different request, 422; while the first request is "
            "still being taken in, 409. In a Logic App use a value that stays the same when the action is retried, "
            "e.g. @{guid()} in an earlier Compose action or the trigger's id."
        ),
    }


def _path(name: str, summary: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "type": "string",
        "x-ms-summary": summary,
        "description": description,
        "x-ms-url-encoding": "single",
    }


def _change_id() -> Schema:
    return _path("changeId", "Change id", "The change's id (changeId in the submit answer).")


def _query(name: str, summary: str, description: str, **extra: Any) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "type": "string",
        "x-ms-summary": summary,
        "description": description,
        **extra,
    }


def _page_params() -> list[Schema]:
    return [
        _query(
            "pageSize",
            "Page size",
            f"Items per page, 1 to {MAX_PAGE_SIZE} (default 50).",
            type="integer",
            minimum=1,
            maximum=MAX_PAGE_SIZE,
            default=50,
            **{"x-ms-visibility": "advanced"},
        ),
        _query(
            "continuationToken",
            "Continuation token",
            "The continuationToken of the previous page.",
            **{"x-ms-visibility": "advanced"},
        ),
    ]


def _body(schema: str, summary: str, description: str, *, required: bool = True) -> Schema:
    return {
        "name": "body",
        "in": "body",
        "required": required,
        "schema": _ref(schema),
        "x-ms-summary": summary,
        "description": description,
    }


_ASYNC_HEADERS: dict[str, Schema] = {
    "Location": {"type": "string", "description": "The status resource to poll (GET) until it answers 200."},
    "Retry-After": {
        "type": "integer",
        "description": (
            f"Whole seconds to wait before polling: {RETRY_AFTER_RUNNING_SECONDS} while the change runs, "
            f"{RETRY_AFTER_AWAITING_APPROVAL_SECONDS} while it awaits an approver."
        ),
    },
}
_WAIT_HEADERS: dict[str, Schema] = {
    "Preference-Applied": {"type": "string", "description": "wait=N when the request's Prefer: wait=N was honoured."},
    "Vary": {"type": "string", "description": "Prefer: the answer depends on the Prefer header."},
}

_PREFER_DESCRIPTION = (
    f"Optional, RFC 7240. wait=N (whole seconds, at most {MAX_WAIT_SECONDS}; more is cut to {MAX_WAIT_SECONDS}) holds "
    "the answer until the change has ended (200 with its status) or waits for an approver (202), or N seconds pass "
    "(202 as without the header). Other preferences are ignored."
)


def _prefer() -> Schema:
    return {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "type": "string",
        "x-ms-summary": "Prefer",
        "x-ms-visibility": "advanced",
        "description": _PREFER_DESCRIPTION,
    }


def _ok(schema: str, description: str) -> Schema:
    return {"description": description, "schema": _ref(schema)}


def _accepted(schema: str, description: str, **headers: Schema) -> Schema:
    return {"description": description, "schema": _ref(schema), "headers": {**_ASYNC_HEADERS, **headers}}


_PROBLEMS = {
    400: "Bad input: the problem's issues name each field.",
    401: "Not signed in.",
    403: "The caller lacks the role this operation needs.",
    404: "No such change (or not visible to the caller).",
    409: "The change is not in a state that allows this.",
    413: "The request body is too large.",
    415: "The request has a body that is not JSON (Content-Type: application/json).",
    422: "The Idempotency-Key was used with a different request.",
    429: "Too many requests from this caller (when the deployment sets a per-caller limit): retry after Retry-After.",
    503: "Not available in this deployment: see the problem's detail.",
}


_CANNOT_RUN_AGAIN = (
    "The change is not in a state that allows this (invalid-state), or its payload was purged after "
    "WRITEBACK_PAYLOAD_RETENTION_DAYS (type urn:writeback:problem:payload-purged): it cannot run again."
)


def _problems(*statuses: int, **overrides: str) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for status in statuses:
        out[str(status)] = {"description": overrides.get(f"s{status}", _PROBLEMS[status]), "schema": _ref("Problem")}
    out["default"] = {"description": "An error, as application/problem+json.", "schema": _ref("Problem")}
    return out


_REPLAYED: dict[str, Schema] = {
    "Idempotent-Replayed": {
        "type": "string",
        "description": "true when this answers an earlier request with the same key.",
    }
}


def _with_wait_headers(answers: dict[str, Schema]) -> dict[str, Schema]:
    for code in ("200", "202"):
        if code in answers:
            answers[code] = {**answers[code], "headers": {**answers[code].get("headers", {}), **_WAIT_HEADERS}}
    return answers


def _change_answers(ended: str | None, running: str, *problems: int, **overrides: str) -> dict[str, Schema]:
    """The change's status: 200 when the call ended it (``ended``, if it can), 202 while it runs on; then the
    ``problems`` (``s409="..."`` words one differently)."""
    answers = {"200": _ok("ChangeStatus", ended)} if ended else {}
    return {**answers, "202": _accepted("ChangeStatus", running), **_problems(*problems, **overrides)}


def _operation(
    operation_id: str,
    summary: str,
    description: str,
    parameters: list[Schema],
    responses: dict[str, Schema],
    *,
    visibility: str | None = None,
    produces_problem: bool = True,
    **extra: Any,
) -> Schema:
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "produces": [JSON, PROBLEM_JSON] if produces_problem else [JSON],
        "parameters": parameters,
        "responses": responses,
    }
    if visibility:
        op["x-ms-visibility"] = visibility
    op.update(extra)
    return op


def _meta_operation(
    operation_id: str, summary: str, description: str, responses: dict[str, Schema], *, visibility: str
) -> Schema:
    """An operation about the gateway itself: no parameters, anonymous, never a problem answer."""
    return _operation(
        operation_id,
        summary,
        description,
        [],
        responses,
        visibility=visibility,
        produces_problem=False,
        security=[],
    )


# --- paths ---------------------------------------------------------------------------------------------------------


def _paths(retention_hours: int) -> dict[str, Schema]:
    read_roles = f"{ROLE_AUDIT}, {ROLE_APPROVE} or {ROLE_OPERATE}"
    status_while_running = (
        "The change is still running: poll the Location header after Retry-After seconds (Logic Apps' "
        "asynchronous pattern)."
    )
    decision_answers = _change_answers(
        "Rejected: the change has ended.", "Approved: the change goes on to writing.", 400, 401, 403, 404, 409, 413, 415
    )
    return {
        "/changes": {
            "post": _operation(
                "SubmitChange",
                "Submit a change",
                (
                    f"Submit a create, update or patch of one FHIR R4 resource (role {ROLE_SUBMIT}). Answers 202 "
                    "with Location and Retry-After; the change runs asynchronously, so a Logic App (or a connector "
                    "action with asynchronous polling) follows Location until the status answers 200 with the "
                    f"outcome. The Idempotency-Key header is required and remembered for {retention_hours} hours. "
                    "With Prefer: wait=N the answer waits until the change ends (200) or awaits an approver (202)."
                ),
                [
                    _idempotency_key(retention_hours),
                    _prefer(),
                    _body("ChangeRequest", "Change", "The change request."),
                ],
                {
                    "200": {
                        **_ok("ChangeStatus", "With Prefer: wait=N, the change ended within the wait: its status."),
                        "headers": {**_WAIT_HEADERS, **_REPLAYED},
                    },
                    "202": _accepted(
                        "Accepted",
                        "Accepted: poll Location until it answers 200 (with Prefer: wait=N, the change still runs "
                        "or awaits an approver).",
                        **_WAIT_HEADERS,
                        **_REPLAYED,
                    ),
                    **_problems(
                        400,
                        401,
                        403,
                        409,
                        413,
                        415,
                        422,
                        429,
                        503,
                        s400="Bad input (shape, target, FHIR validation, a missing or invalid Idempotency-Key).",
                        s409="The first request with this Idempotency-Key is still being taken in: retry.",
                        s503=(
                            "target-not-ready: the target is not configured in this deployment (no base URL) or is "
                            "on a loopback address in Azure. Nothing was stored and the key was not taken: the same "
                            "request goes through once an operator configures the target."
                        ),
                    ),
                },
                visibility="important",
                **{"x-ms-long-running-operation": True},
            ),
            "get": _operation(
                "ListChanges",
                "List changes",
                f"The review and exception queue, paged (role {read_roles}).",
                [
                    _query(
                        "status",
                        "Status",
                        "Only changes in this state.",
                        enum=[s.value for s in ChangeStatus],
                        **{"x-ms-visibility": "important"},
                    ),
                    _query("target", "Target", "Only changes to this target."),
                    _query("resource", "Resource type", "Only changes to this resource type, e.g. Patient."),
                    _query(
                        "verified",
                        "Verified",
                        "true or false: only completed changes whose read-back check matched (or not).",
                        enum=["true", "false"],
                        **{"x-ms-visibility": "advanced"},
                    ),
                    *_page_params(),
                ],
                {"200": _ok("ChangeList", "A page of changes."), **_problems(400, 401, 403)},
            ),
        },
        "/changes/{changeId}": {
            "get": _operation(
                "GetChange",
                "Get a change's status",
                (
                    f"The status of a change (the submitting app, or role {read_roles}). 202 with Location and "
                    "Retry-After while it runs, 200 when it has ended. With Prefer: wait=N the answer waits until "
                    "the change ends or awaits an approver."
                ),
                [_change_id(), _prefer()],
                _with_wait_headers(
                    _change_answers("The change has ended (see status).", status_while_running, 401, 404)
                ),
                visibility="important",
            ),
        },
        "/changes/{changeId}/lineage": {
            "get": _operation(
                "GetChangeLineage",
                "Get a change's lineage",
                "Every step of the change, in order (as for the status).",
                [_change_id()],
                {"200": _ok("Lineage", "The change's lineage."), **_problems(401, 404)},
            ),
        },
        "/changes/{changeId}/approval": {
            "post": _operation(
                "DecideApproval",
                "Approve or reject a change",
                (
                    f"Decide a change awaiting approval (role {ROLE_APPROVE}; not the requester). 202 when it goes "
                    "on to writing (poll Location), 200 when rejected; 403 for self-approval; 409 when it is not "
                    "awaiting approval."
                ),
                [_change_id(), _body("ApprovalDecision", "Decision", "approve or reject, with a comment.")],
                decision_answers,
            ),
        },
        "/callbacks/approval": {
            "post": _operation(
                "ApprovalCallback",
                "Decide with a signed approval token (internal)",
                (
                    "An approval flow decides by posting the notification's approveToken or rejectToken here, in "
                    f"the {TOKEN_HEADER} header (or the body's token), never in the URL: single use, HMAC-signed, "
                    "expiring with the approval deadline. Called by the flow, not by the connector."
                ),
                [
                    {
                        "name": TOKEN_HEADER,
                        "in": "header",
                        "required": False,
                        "type": "string",
                        "maxLength": 1024,
                        "x-ms-summary": "Approval token",
                        "description": "The notification's approveToken or rejectToken.",
                    },
                    _body(
                        "ApprovalCallback",
                        "Decision",
                        "The token (if not in the header), who decided, a comment.",
                        required=False,
                    ),
                ],
                decision_answers,
                visibility="internal",
                security=[],
            ),
        },
        "/changes/{changeId}/approval/callback": {
            "post": _operation(
                "MovedApprovalCallback",
                "Old approval callback (gone)",
                f"Moved to POST /callbacks/approval with the token in the {TOKEN_HEADER} header; answers 410.",
                [_change_id()],
                {"410": {"description": "Gone: the problem's detail says where.", "schema": _ref("Problem")}},
                visibility="internal",
                security=[],
                deprecated=True,
            ),
        },
        "/changes/{changeId}/cancel": {
            "post": _operation(
                "CancelChange",
                "Cancel a change",
                f"Cancel a change awaiting approval (the requester, or role {ROLE_OPERATE}); 409 otherwise.",
                [_change_id()],
                _change_answers("Cancelled.", status_while_running, 401, 403, 404, 409, 413, 415),
            ),
        },
        "/changes/{changeId}/retry": {
            "post": _operation(
                "RetryChange",
                "Retry a change",
                (
                    f"Run a failed, conflict or expired change again under the same change id (role {ROLE_OPERATE}), "
                    "or one left writing with no progress for WRITEBACK_STUCK_AFTER_MINUTES (its orchestration "
                    "stopped; the write is version-checked and tagged, so the target keeps one version); "
                    "409 otherwise, so a second retry does nothing, and 409 payload-purged once the change's "
                    "payload was purged after WRITEBACK_PAYLOAD_RETENTION_DAYS."
                ),
                [_change_id()],
                _change_answers(
                    None, "Running again: poll Location.", 401, 403, 404, 409, 413, 415, s409=_CANNOT_RUN_AGAIN
                ),
                visibility="advanced",
            ),
        },
        "/changes/{changeId}/resolve": {
            "post": _operation(
                "ResolveConflict",
                "Resolve a conflict",
                (
                    f"For a change in conflict (role {ROLE_APPROVE}): replan on the target's current version "
                    "(202, poll Location) or discard it (200); 409 payload-purged once the change's payload was "
                    "purged after WRITEBACK_PAYLOAD_RETENTION_DAYS."
                ),
                [_change_id(), _body("Resolve", "Resolution", "replan or discard.")],
                _change_answers(
                    "Discarded: the change has ended.",
                    "Planning again: poll Location.",
                    400,
                    401,
                    403,
                    404,
                    409,
                    413,
                    415,
                    s409=_CANNOT_RUN_AGAIN,
                ),
                visibility="advanced",
            ),
        },
        "/changes/replay": {
            "post": _operation(
                "ReplayChanges",
                "Replay changes",
                (
                    f"Bulk, selective replay of failed, conflict or expired changes (role {ROLE_OPERATE}). "
                    "dryRun (the default) lists what would be retried."
                ),
                [_body("ReplayRequest", "Filter", "Which changes to replay.", required=False)],
                {
                    "200": _ok("ReplayResult", "What matched, was retried and was skipped."),
                    **_problems(400, 401, 403, 413, 415),
                },
                visibility="advanced",
            ),
        },
        "/lineage/{target}/{resourceType}/{resourceId}": {
            "get": _operation(
                "GetResourceLineage",
                "Get a resource's lineage",
                f"Every change to one resource at one target, newest first (role {ROLE_AUDIT} or {ROLE_OPERATE}).",
                [
                    _path("target", "Target", "The target's id."),
                    _path("resourceType", "Resource type", "The FHIR resource type, e.g. Patient."),
                    _path("resourceId", "Resource id", "The FHIR resource id."),
                    *_page_params(),
                ],
                {"200": _ok("ResourceLineage", "The resource's changes."), **_problems(400, 401, 403, 404)},
            ),
        },
        "/health": {
            "get": _meta_operation(
                "GetHealth",
                "Health",
                "Readiness: 200 when targets, policy and storage are ready, else 503; each dependency's state.",
                {"200": _ok("Health", "Ready."), "503": _ok("Health", "Not ready: see each dependency.")},
                visibility="advanced",
            ),
        },
        "/health/live": {
            "get": _meta_operation(
                "GetLiveness",
                "Liveness",
                "Liveness: 200 whenever the app answers; touches no dependency (use /health for readiness).",
                {"200": {"description": "Alive.", "schema": {"type": "object"}}},
                visibility="internal",
            ),
        },
        "/openapi.json": {
            "get": _meta_operation(
                "GetOpenApiDocument",
                "This OpenAPI document",
                "The OpenAPI 2.0 document of this API, with the host the request came to.",
                {"200": {"description": "The OpenAPI 2.0 document.", "schema": {"type": "object"}}},
                visibility="internal",
            ),
        },
    }


def openapi_document(
    host: str | None = None, base_path: str = "/api/v1", *, retention_hours: int | None = None
) -> dict[str, Any]:
    """The Swagger 2.0 document; ``host`` as the caller reached the gateway (omitted: the document's own host)."""
    hours = retention_hours if retention_hours is not None else default_retention_hours()
    stale = default_stale_after_seconds()
    description = (
        "Governed, idempotent, version-checked write-back into FHIR R4 servers. A change is submitted once and runs "
        "asynchronously: POST /changes answers 202 with Location and Retry-After, and GET /changes/{changeId} "
        "answers 202 while the change runs and 200 when it has ended (completed, planned, rejected, conflict, "
        "failed, expired or cancelled). Errors are application/problem+json (RFC 9457) with issues naming the "
        "field.\n\n"
        f"Idempotency: POST /changes requires an Idempotency-Key header (1-255 printable ASCII characters), scoped "
        f"to the calling app and user. Keys are kept {hours} hours and then purged; within that time the same key "
        "with the same request answers the original 202 again (Idempotent-Replayed: true), with a different request "
        "422, and while the first request is still being taken in 409 (a first attempt that stopped part-way is "
        f"finished by a retry after {stale} s). Bad input is a 4xx and stores nothing.\n\n"
        f"Roles (Entra ID app roles): {ROLE_SUBMIT} to submit; {ROLE_AUDIT}, {ROLE_APPROVE} and {ROLE_OPERATE} to "
        "read every change; a submitting app sees only its own changes."
    )
    schemes = ["https"]
    if host is not None and _is_loopback(host):
        schemes = ["http", "https"]
    doc: dict[str, Any] = {
        "swagger": "2.0",
        "info": {
            "title": "FHIR Write-back Gateway",
            "version": API_VERSION,
            "description": description,
            "x-ms-idempotency-retention-hours": hours,
        },
    }
    if host is not None:
        doc["host"] = host
    doc.update(
        {
            "basePath": base_path,
            "schemes": schemes,
            "consumes": [JSON],
            "produces": [JSON, PROBLEM_JSON],
            "securityDefinitions": {
                "oauth2": {
                    "type": "oauth2",
                    "flow": "accessCode",
                    "authorizationUrl": AUTHORIZATION_URL,
                    "tokenUrl": TOKEN_URL,
                    "description": "Entra ID (Azure AD). The app roles in the token decide what the caller may do.",
                    "scopes": {SCOPE: "Call the write-back gateway as the signed-in user (app roles apply)."},
                }
            },
            "security": [{"oauth2": [SCOPE]}],
            "tags": [
                {"name": "changes", "description": "Submit changes and follow them."},
                {"name": "approvals", "description": "Decide and cancel changes awaiting approval."},
                {"name": "operations", "description": "Retry, resolve and replay."},
                {"name": "meta", "description": "Health and this document."},
            ],
            "paths": _paths(hours),
            "definitions": _definitions(),
        }
    )
    _tag(doc["paths"])
    return doc


_TAGS = {
    "SubmitChange": "changes",
    "ListChanges": "changes",
    "GetChange": "changes",
    "GetChangeLineage": "changes",
    "GetResourceLineage": "changes",
    "DecideApproval": "approvals",
    "ApprovalCallback": "approvals",
    "MovedApprovalCallback": "approvals",
    "CancelChange": "approvals",
    "RetryChange": "operations",
    "ResolveConflict": "operations",
    "ReplayChanges": "operations",
    "GetHealth": "meta",
    "GetLiveness": "meta",
    "GetOpenApiDocument": "meta",
}


def _tag(paths: dict[str, Schema]) -> None:
    for item in paths.values():
        for op in item.values():
            op["tags"] = [_TAGS[op["operationId"]]]


if __name__ == "__main__":
    import json

    print(json.dumps(openapi_document(host=PLACEHOLDER_HOST), indent=2, ensure_ascii=False))
