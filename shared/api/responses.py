"""HTTP answers as plain data (status, JSON body, headers), and errors as RFC 9457 problem+json.

The HTTP triggers turn an ``ApiResponse`` into the host's response type; nothing here knows Azure Functions.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.core.errors import Issue, RequestError, StorageUnavailableError, WritebackError
from shared.core.problems import problem_body

log = logging.getLogger("writeback.api")

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
RETRY_AFTER_SECONDS = 2
MAX_PAGE_SIZE = 200


@dataclass
class ApiResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def problem(
    error: WritebackError, *, instance: str | None = None, headers: dict[str, str] | None = None
) -> ApiResponse:
    status = error.status if 400 <= error.status <= 599 else 500
    answer_headers = dict(headers or {})
    if isinstance(error, StorageUnavailableError) and error.retry_after is not None:
        answer_headers.setdefault("Retry-After", str(max(1, math.ceil(error.retry_after))))
    return ApiResponse(status, problem_body(error, instance=instance), answer_headers, PROBLEM_JSON)


def answer(action: Callable[[], ApiResponse], instance: str) -> ApiResponse:
    """Run ``action``; a ``WritebackError`` becomes its problem+json, anything else is logged (ids only) and a 500."""
    try:
        return action()
    except WritebackError as exc:
        return problem(exc, instance=instance)
    except Exception:
        log.exception("unexpected error answering %s", instance)
        return problem(WritebackError(), instance=instance)


def still_running(body: dict[str, Any]) -> ApiResponse:
    """``202`` for a change that has not ended: where to poll, and when."""
    return ApiResponse(202, body, {"Location": body["links"]["self"], "Retry-After": str(RETRY_AFTER_SECONDS)})


def change_answer(body: dict[str, Any], *, terminal: bool) -> ApiResponse:
    """A change's status: ``200`` once it has ended, else ``202`` with ``Location`` and ``Retry-After``."""
    return ApiResponse(200, body) if terminal else still_running(body)


def header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def page_size(params: Mapping[str, str]) -> int:
    raw = params.get("pageSize") or "50"
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise RequestError(
            "pageSize is out of range",
            issues=[Issue("pageSize", "invalid", f"a whole number from 1 to {MAX_PAGE_SIZE}")],
        )
    return int(raw)
