"""An in-memory FHIR R4 server for one target, behind the ``FhirClient`` port.

Faithful where the gateway can tell the difference: opaque version ids (uuid4 hex, never integers), meta.versionId
and meta.lastUpdated set on every write, version history and vread, ``If-Match`` (stale → ConflictError, missing
resource → NotFoundError), ``If-None-Exist`` (one match → the existing resource with status 200, several → 412),
JSON Patch, search by ``identifier`` / ``_tag`` / ``_id``, and transaction Bundles (atomic, ``urn:uuid``
references rewritten). Errors are produced by the real adapter's mapping (``error_for``) from the HTTP status a
server would send, so they look exactly like the real client's.

``fail_next(error, count)`` makes the next interactions fail (before anything is applied, or with
``after_apply=True`` after the write was applied, like a response lost on the way back).
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx
import jsonpatch
import jsonpointer

from shared.adapters.fhir_http import error_for
from shared.core.errors import DownstreamError
from shared.core.fhir_headers import if_match_value, parse_etag
from shared.core.ports import FhirResponse

R = TypeVar("R")

INTERACTIONS = frozenset({"read", "vread", "search", "create", "update", "patch", "transaction"})
SEARCH_PARAMS = frozenset({"identifier", "_tag", "_id", "_count"})
IGNORED_SEARCH_PARAMS = frozenset({"_sort", "_total", "_format"})

_METHOD = {
    "read": "GET",
    "vread": "GET",
    "search": "GET",
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "transaction": "POST",
}
_REASON = {200: "OK", 201: "Created"}


def _now() -> datetime:
    return datetime.now(UTC)


def _instant(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


_ISSUE_CODE = {400: "invalid", 404: "not-found", 409: "conflict", 412: "conflict", 422: "processing"}


def _http_error(status: int, interaction: str, resource_type: str | None, diagnostics: str) -> DownstreamError:
    """The error the real client would raise for this status (same mapping, same detail format)."""
    body = _outcome(_ISSUE_CODE.get(status, "exception"), diagnostics)
    response = httpx.Response(status, json=body, headers={"Content-Type": "application/fhir+json"})
    return error_for(response, method=_METHOD.get(interaction, "GET"), resource_type=resource_type)


@dataclass
class _Failure:
    error: Exception
    remaining: int
    interactions: frozenset[str] | None
    after_apply: bool


@dataclass
class _Written:
    """One interaction's result before it is shaped as a FhirResponse or a transaction entry."""

    status: int
    resource: dict[str, Any]


class FakeFhirClient:
    """``FhirClient`` over an in-memory store. Thread-safe; one instance plays one target server."""

    def __init__(
        self,
        base_url: str = "http://fake-fhir.local/fhir",
        *,
        return_representation: bool = True,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.return_representation = return_representation
        self._clock = clock
        self._lock = threading.RLock()
        self._current: dict[tuple[str, str], dict[str, Any]] = {}
        self._history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._failures: list[_Failure] = []
        self.calls: list[tuple[str, str]] = []
        """(interaction, resource type) of every interaction attempted, in order (like a server access log)."""

    # -- test controls ---------------------------------------------------------------------------------------

    def fail_next(
        self,
        error: Exception,
        count: int = 1,
        *,
        interactions: Iterable[str] | None = None,
        after_apply: bool = False,
    ) -> None:
        """Raise ``error`` on the next ``count`` interactions (optionally only these interactions).

        With ``after_apply=True`` a write is applied first and then fails, as when the response is lost.
        """
        only = frozenset(interactions) if interactions is not None else None
        if only is not None and not only <= INTERACTIONS:
            raise ValueError(f"unknown interactions: {sorted(only - INTERACTIONS)}")
        with self._lock:
            self._failures.append(_Failure(error, count, only, after_apply))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def resources(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        """Copies of the current version of every stored resource (of one type, if given)."""
        with self._lock:
            return [copy.deepcopy(r) for (t, _), r in sorted(self._current.items()) if resource_type in (None, t)]

    def history(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """Every version of one resource, oldest first."""
        with self._lock:
            return copy.deepcopy(self._history.get((resource_type, resource_id), []))

    # -- FhirClient ------------------------------------------------------------------------------------------

    def versions(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            self._get("read", resource_type, resource_id)
            return list(reversed(self.history(resource_type, resource_id)))

        return self._interaction("read", resource_type, run)

    def read(self, resource_type: str, resource_id: str) -> FhirResponse:
        def run() -> FhirResponse:
            return self._as_response(_Written(200, self._get("read", resource_type, resource_id)), write=False)

        return self._interaction("read", resource_type, run)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> FhirResponse:
        def run() -> FhirResponse:
            self._get("vread", resource_type, resource_id)
            vid = parse_etag(version_id)
            for version in self._history.get((resource_type, resource_id), []):
                if version["meta"]["versionId"] == vid:
                    return self._as_response(_Written(200, copy.deepcopy(version)), write=False)
            raise _http_error(404, "vread", resource_type, "Version not found")

        return self._interaction("vread", resource_type, run)

    def search(self, resource_type: str, params: Mapping[str, str]) -> dict[str, Any]:
        return self._interaction("search", resource_type, lambda: self._search(resource_type, params))

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> FhirResponse:
        rtype = resource.get("resourceType")
        return self._interaction(
            "create",
            rtype if isinstance(rtype, str) else None,
            lambda: self._as_response(self._create(resource, if_none_exist)),
            write=True,
        )

    def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> FhirResponse:
        rtype = resource.get("resourceType")
        return self._interaction(
            "update",
            rtype if isinstance(rtype, str) else None,
            lambda: self._as_response(self._update(resource, if_match)),
            write=True,
        )

    def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: Sequence[dict[str, Any]],
        *,
        if_match: str | None = None,
    ) -> FhirResponse:
        return self._interaction(
            "patch",
            resource_type,
            lambda: self._as_response(self._patch(resource_type, resource_id, operations, if_match)),
            write=True,
        )

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        return self._interaction("transaction", "Bundle", lambda: self._transaction(bundle), write=True)

    # -- the server ------------------------------------------------------------------------------------------

    def _interaction(
        self, interaction: str, resource_type: str | None, run: Callable[[], R], *, write: bool = False
    ) -> R:
        with self._lock:
            self.calls.append((interaction, resource_type or ""))
            self._maybe_fail(interaction, after_apply=False)
            result = run()
            if write:
                self._maybe_fail(interaction, after_apply=True)
            return result

    def _maybe_fail(self, interaction: str, *, after_apply: bool) -> None:
        for failure in self._failures:
            if failure.after_apply != after_apply:
                continue
            if failure.interactions is not None and interaction not in failure.interactions:
                continue
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.remove(failure)
            raise failure.error

    def _get(self, interaction: str, resource_type: str, resource_id: str) -> dict[str, Any]:
        found = self._current.get((resource_type, resource_id))
        if found is None:
            raise _http_error(404, interaction, resource_type, "Not found")
        return copy.deepcopy(found)

    def _store(self, interaction: str, resource: dict[str, Any]) -> dict[str, Any]:
        """Write a new version: fresh opaque versionId and lastUpdated; returns a copy of what was stored."""
        rtype, rid = resource["resourceType"], resource["id"]
        stored = copy.deepcopy(resource)
        meta = stored.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta["versionId"] = uuid.uuid4().hex
        meta["lastUpdated"] = _instant(self._clock())
        stored["meta"] = meta
        self._current[(rtype, rid)] = stored
        self._history.setdefault((rtype, rid), []).append(stored)
        return copy.deepcopy(stored)

    @staticmethod
    def _check_resource(interaction: str, resource: object) -> dict[str, Any]:
        if not isinstance(resource, dict):
            raise _http_error(400, interaction, None, "Body is not a resource")
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not rtype[:1].isupper():
            raise _http_error(400, interaction, None, "Missing resourceType")
        return resource

    def _create(self, resource: dict[str, Any], if_none_exist: str | None, assigned_id: str | None = None) -> _Written:
        resource = self._check_resource("create", resource)
        rtype = resource["resourceType"]
        if if_none_exist:
            matches = self._matching(rtype, self._query(if_none_exist, "create", rtype), "create")
            if len(matches) == 1:
                return _Written(200, copy.deepcopy(matches[0]))
            if len(matches) > 1:
                raise _http_error(412, "create", rtype, "Multiple resources match the If-None-Exist criteria")
        body = {k: v for k, v in resource.items() if k != "id"}  # the server ignores a client id on create
        body["id"] = assigned_id or str(uuid.uuid4())
        return _Written(201, self._store("create", body))

    def _update(self, resource: dict[str, Any], if_match: str | None) -> _Written:
        resource = self._check_resource("update", resource)
        rtype, rid = resource["resourceType"], resource.get("id")
        if not isinstance(rid, str) or not rid:
            raise _http_error(400, "update", rtype, "Missing id")
        existing = self._current.get((rtype, rid))
        if if_match:
            if existing is None:
                raise _http_error(404, "update", rtype, "Not found")
            if existing["meta"]["versionId"] != parse_etag(if_match_value(if_match)):
                raise _http_error(412, "update", rtype, "Version mismatch")
        return _Written(200 if existing is not None else 201, self._store("update", resource))

    def _patch(
        self, resource_type: str, resource_id: str, operations: Sequence[dict[str, Any]], if_match: str | None
    ) -> _Written:
        current = self._get("patch", resource_type, resource_id)
        if if_match and current["meta"]["versionId"] != parse_etag(if_match_value(if_match)):
            raise _http_error(412, "patch", resource_type, "Version mismatch")
        try:
            patched = jsonpatch.apply_patch(current, list(operations), in_place=False)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
            raise _http_error(400, "patch", resource_type, f"Invalid patch ({type(exc).__name__})") from None
        if not isinstance(patched, dict):
            raise _http_error(400, "patch", resource_type, "Patch did not produce a resource")
        if patched.get("resourceType") != resource_type or patched.get("id") != resource_id:
            raise _http_error(400, "patch", resource_type, "Patch may not change resourceType or id")
        return _Written(200, self._store("patch", patched))

    # -- search ----------------------------------------------------------------------------------------------

    @staticmethod
    def _query(query: str, interaction: str, resource_type: str) -> list[tuple[str, str]]:
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True)
        if not pairs:
            raise _http_error(400, interaction, resource_type, "Empty search criteria")
        return pairs

    def _search(self, resource_type: str, params: Mapping[str, str]) -> dict[str, Any]:
        matches = self._matching(resource_type, list(params.items()), "search")
        total = len(matches)
        count = params.get("_count")
        if count is not None:
            if not count.isdigit():
                raise _http_error(400, "search", resource_type, "Invalid _count")
            matches = matches[: int(count)]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total}
        if matches:
            bundle["entry"] = [
                {
                    "fullUrl": f"{self.base_url}/{resource_type}/{r['id']}",
                    "resource": copy.deepcopy(r),
                    "search": {"mode": "match"},
                }
                for r in matches
            ]
        return bundle

    def _matching(self, resource_type: str, params: list[tuple[str, str]], interaction: str) -> list[dict[str, Any]]:
        criteria: list[tuple[str, list[str]]] = []
        for name, value in params:
            if name in IGNORED_SEARCH_PARAMS or name == "_count":
                continue
            if name not in SEARCH_PARAMS:
                raise _http_error(400, interaction, resource_type, f"Unknown search parameter {name!r}")
            criteria.append((name, value.split(",")))
        return [
            copy.deepcopy(r)
            for (t, _), r in sorted(self._current.items())
            if t == resource_type and all(_matches(r, name, alternatives) for name, alternatives in criteria)
        ]

    # -- transaction -----------------------------------------------------------------------------------------

    def _transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise _http_error(400, "transaction", "Bundle", "Not a Bundle")
        kind = bundle.get("type")
        if kind not in ("transaction", "batch"):
            raise _http_error(400, "transaction", "Bundle", "Bundle type must be transaction or batch")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise _http_error(400, "transaction", "Bundle", "Invalid entries")
        if kind == "batch":
            return {
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": [self._batch_entry(e) for e in entries],
            }
        snapshot = (copy.deepcopy(self._current), copy.deepcopy(self._history))
        try:
            entries = copy.deepcopy(entries)
            assigned = self._resolve_urn_uuids(entries)
            out = [self._apply_entry(e, assigned.get(i)) for i, e in enumerate(entries)]
        except BaseException:
            self._current, self._history = snapshot  # all or nothing
            raise
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}

    def _batch_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._apply_entry(copy.deepcopy(entry))
        except DownstreamError as exc:
            status = exc.downstream_status or 500
            return {"response": {"status": str(status), "outcome": exc.operation_outcome}}

    def _resolve_urn_uuids(self, entries: list[dict[str, Any]]) -> dict[int, str]:
        """Give every POST entry with a ``urn:uuid`` fullUrl its id up front and rewrite references to it (in place).

        Returns the ids assigned to entries that will be created, by entry index.
        """
        mapping: dict[str, str] = {}
        assigned: dict[int, str] = {}
        for index, entry in enumerate(entries):
            full_url, resource, request = entry.get("fullUrl"), entry.get("resource"), entry.get("request") or {}
            if not (isinstance(full_url, str) and full_url.startswith("urn:uuid:") and isinstance(resource, dict)):
                continue
            if request.get("method") != "POST":
                continue
            rtype = resource.get("resourceType")
            rid: str | None = None
            if request.get("ifNoneExist") and isinstance(rtype, str):
                matches = self._matching(rtype, self._query(request["ifNoneExist"], "transaction", rtype), "create")
                if len(matches) == 1:
                    rid = matches[0]["id"]
            if rid is None:
                rid = assigned[index] = str(uuid.uuid4())
            mapping[full_url] = f"{rtype}/{rid}"
        if mapping:
            for entry in entries:
                if isinstance(entry.get("resource"), dict):
                    entry["resource"] = _rewrite_references(entry["resource"], mapping)
        return assigned

    def _apply_entry(self, entry: dict[str, Any], assigned_id: str | None = None) -> dict[str, Any]:
        request = entry.get("request")
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            raise _http_error(400, "transaction", "Bundle", "Entry without request.method")
        method = request["method"].upper()
        url = str(request.get("url") or "")
        path = urlsplit(url).path.strip("/")
        parts = [p for p in path.split("/") if p]
        resource = entry.get("resource")
        if method == "POST":
            written = self._create(self._check_resource("create", resource), request.get("ifNoneExist"), assigned_id)
        elif method == "PUT" and len(parts) == 2:
            resource = self._check_resource("update", resource)
            if resource.get("resourceType") != parts[0] or resource.get("id") != parts[1]:
                raise _http_error(400, "update", parts[0], "Entry URL does not match the resource")
            written = self._update(resource, request.get("ifMatch"))
        elif method == "PATCH" and len(parts) == 2:
            written = self._patch(parts[0], parts[1], _patch_operations(resource, parts[0]), request.get("ifMatch"))
        elif method == "GET" and len(parts) == 2:
            written = _Written(200, self._get("read", parts[0], parts[1]))
        elif method == "GET" and len(parts) == 1:
            query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
            return {"resource": self._search(parts[0], query), "response": {"status": "200 OK"}}
        else:
            raise _http_error(400, "transaction", "Bundle", f"Unsupported entry {method} {len(parts)}-part url")
        return self._as_entry(written)

    # -- shaping ---------------------------------------------------------------------------------------------

    def _headers(self, resource: dict[str, Any], *, location: bool) -> tuple[str, str | None, str, str]:
        vid = resource["meta"]["versionId"]
        etag = f'W/"{vid}"'
        loc = f"{self.base_url}/{resource['resourceType']}/{resource['id']}/_history/{vid}" if location else None
        last_updated = datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))
        return vid, loc, etag, format_datetime(last_updated, usegmt=True)

    def _as_response(self, written: _Written, *, write: bool = True) -> FhirResponse:
        """Reads always return the resource; writes only with ``Prefer: return=representation``."""
        vid, loc, etag, last_modified = self._headers(written.resource, location=write)
        headers = {"ETag": etag, "Last-Modified": last_modified, "Content-Type": "application/fhir+json"}
        if loc:
            headers["Location"] = loc
        return FhirResponse(
            status=written.status,
            resource=written.resource if self.return_representation or not write else None,
            version_id=vid,
            etag=etag,
            location=loc,
            last_modified=last_modified,
            headers=httpx.Headers(headers),
        )

    def _as_entry(self, written: _Written) -> dict[str, Any]:
        r = written.resource
        vid = r["meta"]["versionId"]
        entry: dict[str, Any] = {
            "fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}",
            "response": {
                "status": f"{written.status} {_REASON.get(written.status, '')}".strip(),
                "location": f"{r['resourceType']}/{r['id']}/_history/{vid}",
                "etag": f'W/"{vid}"',
                "lastModified": r["meta"]["lastUpdated"],
            },
        }
        if self.return_representation:
            entry["resource"] = r
        return entry


def _matches(resource: dict[str, Any], name: str, alternatives: list[str]) -> bool:
    if name == "_id":
        return resource.get("id") in alternatives
    if name == "identifier":
        return _any_token(resource.get("identifier"), alternatives, "system", "value")
    return _any_token(_meta_tags(resource), alternatives, "system", "code")  # _tag


def _meta_tags(resource: dict[str, Any]) -> Any:
    meta = resource.get("meta")
    return meta.get("tag") if isinstance(meta, dict) else None


def _any_token(codings: Any, alternatives: list[str], system_key: str, code_key: str) -> bool:
    """FHIR token search over a list of Identifier / Coding: ``system|code``, ``|code``, ``system|``, ``code``."""
    if not isinstance(codings, list):
        return False
    for alt in alternatives:
        if "|" in alt:
            system, code = alt.split("|", 1)
        else:
            system, code = None, alt
        for c in codings:
            if not isinstance(c, dict):
                continue
            c_system, c_code = c.get(system_key), c.get(code_key)
            if system is not None and system == "" and c_system:
                continue
            if system and c_system != system:
                continue
            if code and c_code != code:
                continue
            return True
    return False


def _rewrite_references(node: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in mapping:
                out[key] = mapping[value]
            else:
                out[key] = _rewrite_references(value, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite_references(v, mapping) for v in node]
    return node


def _patch_operations(resource: Any, resource_type: str) -> list[dict[str, Any]]:
    """A transaction PATCH entry carries its JSON Patch as a Binary (base64 ``data``)."""
    if (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Binary"
        and isinstance(resource.get("data"), str)
    ):
        try:
            ops = json.loads(base64.b64decode(resource["data"]))
        except ValueError:
            ops = None
        if isinstance(ops, list) and all(isinstance(op, dict) for op in ops):
            return ops
    raise _http_error(400, "patch", resource_type, "PATCH entry needs a Binary carrying a JSON Patch")
