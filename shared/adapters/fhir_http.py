"""FHIR R4 over HTTP: the real ``FhirClient`` on httpx, and the one mapping from HTTP outcomes to the error tree.

- One ``httpx.Client`` per process (``shared_http_client``), with per-request timeouts taken from the target.
- Versions are opaque strings: ``If-Match`` sends ``W/"<vid>"``; ``ETag`` is parsed back to the bare id.
- Errors never carry resource content or URLs (search parameters can hold identifiers): only the method, the
  resource type and the status, plus the server's OperationOutcome in ``operation_outcome``.
- A bearer token goes over plain ``http://`` to loopback only; elsewhere the request is refused before any token is
  asked for (``AuthError``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from opentelemetry.trace import SpanKind

from shared.adapters.identity import TokenProvider
from shared.core.errors import (
    AuthError,
    ConfigurationError,
    ConflictError,
    DownstreamError,
    DownstreamNotFoundError,
    PermanentError,
    RetryableError,
)
from shared.core.fhir_headers import if_match_value, parse_etag, parse_retry_after
from shared.core.fhir_ids import LOGICAL_ID_RE, RESOURCE_TYPE_RE
from shared.core.ports import FhirResponse
from shared.core.targets import AuthKind, TargetConfig, in_clear_off_loopback
from shared.core.telemetry import tracer

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
USER_AGENT = "fhir-writeback-gateway"

_HISTORY_IN_LOCATION = re.compile(r"/_history/([^/?#]+)")

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})

# --- the process-wide HTTP client ---------------------------------------------------------------------------

_http: httpx.Client | None = None
_http_lock = threading.Lock()


def shared_http_client() -> httpx.Client:
    """The one pooled client of this process (created on first use; recreated if someone closed it)."""
    global _http
    with _http_lock:
        if _http is None or _http.is_closed:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=30.0)
            _http = httpx.Client(
                # retries=1 re-dials a failed *connect* only; nothing sent is ever repeated here.
                transport=httpx.HTTPTransport(limits=limits, retries=1),
                timeout=httpx.Timeout(30.0, connect=5.0),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
        return _http


def close_shared_http_client() -> None:
    global _http
    with _http_lock:
        if _http is not None:
            _http.close()
            _http = None


# --- the one error mapping ----------------------------------------------------------------------------------


def operation_outcome_of(response: httpx.Response) -> dict[str, Any] | None:
    """The response body when it is an OperationOutcome, else None."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return None


def error_for(
    outcome: httpx.Response | httpx.HTTPError,
    *,
    method: str,
    resource_type: str | None,
    now: float | None = None,
) -> DownstreamError:
    """Map a failed HTTP exchange (an error response, or a transport failure) to the gateway's error tree.

    The detail names only the method, the resource type and the status: no body, no URL, no PHI.
    """
    what = f"{method.upper()} {resource_type or 'FHIR'}"
    if isinstance(outcome, httpx.HTTPError):
        kind = type(outcome).__name__
        if isinstance(outcome, httpx.TimeoutException):
            return RetryableError(detail=f"{what}: timed out ({kind})")
        if isinstance(outcome, httpx.TransportError):
            return RetryableError(detail=f"{what}: connection failed ({kind})")
        return PermanentError(detail=f"{what}: request failed ({kind})")

    status = outcome.status_code
    reason = outcome.reason_phrase or ""
    detail = f"{what}: HTTP {status}{(' ' + reason) if reason else ''}"
    oo = operation_outcome_of(outcome)
    if status in (404, 410):
        return DownstreamNotFoundError(detail=detail, downstream_status=status, operation_outcome=oo)
    if status in (409, 412):
        return ConflictError(detail=detail, downstream_status=status, operation_outcome=oo)
    if status in (401, 403):
        return AuthError(detail=detail, downstream_status=status, operation_outcome=oo)
    if status in RETRYABLE_STATUSES:
        retry_after = parse_retry_after(outcome.headers.get("Retry-After"), now=now)
        return RetryableError(detail=detail, downstream_status=status, operation_outcome=oo, retry_after=retry_after)
    if 500 <= status <= 599 and status != 501:
        retry_after = parse_retry_after(outcome.headers.get("Retry-After"), now=now)
        return RetryableError(detail=detail, downstream_status=status, operation_outcome=oo, retry_after=retry_after)
    # other 4xx, 501 Not Implemented, and unexpected 1xx/3xx: retrying will not help
    return PermanentError(detail=detail, downstream_status=status, operation_outcome=oo)


# --- the client ---------------------------------------------------------------------------------------------


def _check_type(resource_type: object) -> str:
    if not isinstance(resource_type, str) or not RESOURCE_TYPE_RE.match(resource_type):
        raise PermanentError(detail="invalid FHIR resource type")
    return resource_type


def _check_id(value: object, what: str = "id") -> str:
    if not isinstance(value, str) or not LOGICAL_ID_RE.match(value):
        raise PermanentError(detail=f"invalid FHIR {what}")
    return value


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class HttpFhirClient:
    """``FhirClient`` for one target FHIR R4 server over HTTP."""

    def __init__(
        self,
        target: TargetConfig,
        *,
        http: httpx.Client | None = None,
        tokens: TokenProvider | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> None:
        """``before_send`` runs just before each request leaves, after its token is at hand: a rate limit's slot
        taken there is not spent waiting for a token (which would let the calls after it arrive too close)."""
        if target.auth.type is not AuthKind.NONE and tokens is None:
            raise ConfigurationError(
                f"target {target.id!r} uses {target.auth.type.value} auth but has no token provider"
            )
        self.target = target
        self._http = http
        self._tokens = tokens
        self._before_send = before_send
        self._base = target.base_url.rstrip("/")
        self._timeout = httpx.Timeout(target.timeout_seconds, connect=target.connect_timeout_seconds)

    # -- FhirClient ------------------------------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> FhirResponse:
        rtype, rid = _check_type(resource_type), _check_id(resource_id)
        return self._response(self._send("GET", f"{rtype}/{rid}", resource_type=rtype))

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> FhirResponse:
        rtype, rid = _check_type(resource_type), _check_id(resource_id)
        vid = _check_id(parse_etag(version_id), "version id")
        return self._response(self._send("GET", f"{rtype}/{rid}/_history/{vid}", resource_type=rtype))

    def search(self, resource_type: str, params: Mapping[str, str]) -> dict[str, Any]:
        rtype = _check_type(resource_type)
        resp = self._send("GET", rtype, resource_type=rtype, params=dict(params))
        bundle = self._json(resp, method="GET", resource_type=rtype)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise PermanentError(
                detail=f"GET {rtype}: search did not return a Bundle", downstream_status=resp.status_code
            )
        return bundle

    def versions(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        rtype, rid = _check_type(resource_type), _check_id(resource_id)
        resp = self._send("GET", f"{rtype}/{rid}/_history", resource_type=rtype)
        bundle = self._json(resp, method="GET", resource_type=rtype)
        entries = bundle.get("entry") if isinstance(bundle, dict) else None
        found = [e["resource"] for e in entries or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        return sorted(found, key=lambda r: str((r.get("meta") or {}).get("lastUpdated", "")), reverse=True)

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> FhirResponse:
        rtype = _check_type(resource.get("resourceType"))
        # FHIR: the server ignores an id on create. Not every server does, so it is not sent at all.
        body = {k: v for k, v in resource.items() if k != "id"}
        headers = self._write_headers()
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        resp = self._send("POST", rtype, resource_type=rtype, headers=headers, body=_json_bytes(body))
        return self._response(resp)

    def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> FhirResponse:
        rtype = _check_type(resource.get("resourceType"))
        rid = _check_id(resource.get("id"))
        headers = self._write_headers()
        if if_match:
            headers["If-Match"] = if_match_value(if_match)
        resp = self._send("PUT", f"{rtype}/{rid}", resource_type=rtype, headers=headers, body=_json_bytes(resource))
        return self._response(resp)

    def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: Sequence[dict[str, Any]],
        *,
        if_match: str | None = None,
    ) -> FhirResponse:
        rtype, rid = _check_type(resource_type), _check_id(resource_id)
        headers = self._write_headers(content_type=JSON_PATCH)
        if if_match:
            headers["If-Match"] = if_match_value(if_match)
        body = _json_bytes(list(operations))
        return self._response(self._send("PATCH", f"{rtype}/{rid}", resource_type=rtype, headers=headers, body=body))

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in ("transaction", "batch"):
            raise PermanentError(detail="POST Bundle: not a transaction or batch Bundle")
        resp = self._send("POST", "", resource_type="Bundle", headers=self._write_headers(), body=_json_bytes(bundle))
        result = self._json(resp, method="POST", resource_type="Bundle")
        if not isinstance(result, dict) or result.get("resourceType") != "Bundle":
            raise PermanentError(detail="POST Bundle: response is not a Bundle", downstream_status=resp.status_code)
        return result

    # -- plumbing --------------------------------------------------------------------------------------------

    def _write_headers(self, *, content_type: str = FHIR_JSON) -> dict[str, str]:
        headers = {"Content-Type": content_type}
        if self.target.capabilities.return_representation:
            headers["Prefer"] = "return=representation"
        return headers

    def _send(
        self,
        method: str,
        path: str,
        *,
        resource_type: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        all_headers = {"Accept": FHIR_JSON, **(headers or {})}
        url = f"{self._base}/{path}" if path else self._base
        if self._tokens is not None:
            if in_clear_off_loopback(url):
                # The targets file refuses such a target; this holds for one built any other way. No token is asked.
                raise AuthError(
                    detail=f"{method} {resource_type}: refused to send a bearer token over plain http to a host "
                    "that is not loopback"
                )
            scope = self.target.auth.scope
            if not scope:
                raise ConfigurationError(f"target {self.target.id!r}: auth needs a scope")
            all_headers["Authorization"] = f"Bearer {self._tokens.token(scope)}"
        http = self._http if self._http is not None else shared_http_client()
        if self._before_send is not None:
            self._before_send()
        attributes = {
            "http.request.method": method,
            "writeback.target": self.target.id,
            "writeback.resource_type": resource_type,
        }
        with tracer.start_as_current_span(
            f"FHIR {method} {resource_type}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                resp = http.request(
                    method, url, params=params, headers=all_headers, content=body, timeout=self._timeout
                )
            except httpx.HTTPError as exc:
                span.set_attribute("error.type", type(exc).__name__)
                # not chained: httpx messages name the URL, and search URLs can carry identifiers
                raise error_for(exc, method=method, resource_type=resource_type) from None
            span.set_attribute("http.response.status_code", resp.status_code)
        if not resp.is_success:
            raise error_for(resp, method=method, resource_type=resource_type)
        return resp

    @staticmethod
    def _json(resp: httpx.Response, *, method: str, resource_type: str) -> Any:
        try:
            return resp.json()
        except (ValueError, UnicodeDecodeError):
            raise PermanentError(
                detail=f"{method} {resource_type}: response body is not JSON", downstream_status=resp.status_code
            ) from None

    @staticmethod
    def _response(resp: httpx.Response) -> FhirResponse:
        resource: dict[str, Any] | None = None
        if resp.content.strip():
            try:
                parsed = resp.json()
            except (ValueError, UnicodeDecodeError):
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str):
                resource = parsed
        etag = resp.headers.get("ETag")
        location = resp.headers.get("Location") or resp.headers.get("Content-Location")
        version_id = parse_etag(etag)
        if version_id is None and resource is not None:
            meta = resource.get("meta")
            if isinstance(meta, dict) and isinstance(meta.get("versionId"), str):
                version_id = meta["versionId"]
        if version_id is None and location:
            m = _HISTORY_IN_LOCATION.search(location)
            version_id = m.group(1) if m else None
        return FhirResponse(
            status=resp.status_code,
            resource=resource,
            version_id=version_id,
            etag=etag,
            location=location,
            last_modified=resp.headers.get("Last-Modified"),
            headers=httpx.Headers(resp.headers),
        )
