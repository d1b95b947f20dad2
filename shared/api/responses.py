"""HTTP answers as plain data (status, JSON body, headers), and errors as RFC 9457 problem+json.

The HTTP triggers turn an ``ApiResponse`` into the host's response type; nothing here knows Azure Functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shared.core.errors import WritebackError
from shared.core.problems import problem_body

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"


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
    return ApiResponse(status, problem_body(error, instance=instance), dict(headers or {}), PROBLEM_JSON)
