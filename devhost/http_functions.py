"""Serve the app's HTTP-triggered functions on Starlette the way the Functions host and the Python worker do.

What the host does, and this module reproduces (Functions host v4, Python worker, azure-functions 1.26):

- Each function is an ASP.NET Core route template ``{routePrefix}/{route}`` (``route`` defaults to the function
  name). Literal segments match case-insensitively; parameters may carry inline constraints (``int``, ``guid``,
  ``alpha``, ``regex(...)``, ...), be optional (``{id?}``), have a default (``{id=1}``) or catch the rest
  (``{*path}``).
- ``methods`` is a route *constraint*: a request whose method no matching route allows falls through to the next
  route and, failing all, gets 404 — never 405.
- The worker's ``HttpRequest``: URL ``{scheme}://{Host}{path}{?query}``; header names lower-cased, repeated headers
  joined with "," (ASP.NET ``StringValues``); query parameters decoded, keys case-insensitive, repeated keys joined
  with ",", empty values dropped; route values as strings, absent optional ones left out; body bytes untouched.
- A returned ``HttpResponse`` keeps its status, body and headers; without a Content-Type header the mimetype is used
  (with ``; charset=`` for ``text/*``). A returned ``str`` is 200 ``text/plain; charset=utf-8``. An exception, or a
  return value the worker cannot encode (``None``, ``bytes``, ...), is a 500 with an empty body.
- The host refuses request bodies over 100 MiB with 413.

Where this module deliberately differs, it logs a warning so the difference shows up locally:

- Route order: the host tries routes in the order of its function list (by function name; azure-functions-host
  #9876, #3153), so ``changes/{id}`` can shadow ``changes/summary``. Here ASP.NET precedence applies (literal
  before constrained before plain parameter before catch-all), and a request the host would give to another
  function is logged.
- Repeated response headers: the worker keeps only the last value of a repeated header (``Set-Cookie`` excepted).
  Here all values are sent.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from azure.functions import _abc as functions_abc
from azure.functions.http import HttpRequest as WorkerHttpRequest
from starlette.datastructures import URLPath
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from devhost.app_index import HTTP, AppIndex, FunctionInfo
from devhost.invoke import ainvoke

logger = logging.getLogger("devhost.http")

DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024

DurableClientJson = Callable[[str], str]


class RequestBodyTooLargeError(Exception):
    """The request body is larger than the configured cap."""


# --- route templates ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    name: str
    checks: tuple[Callable[[str], bool], ...]
    optional: bool
    default: str | None
    catch_all: bool


_Part = str | _Param

_NUMBER_WS = re.compile(r"^\s*[+-]?[0-9]+\s*$", re.ASCII)
_FLOAT = re.compile(r"^\s*[+-]?(?:[0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*$", re.ASCII)
_DECIMAL = re.compile(r"^\s*[+-]?(?:[0-9][0-9,]*(?:\.[0-9]*)?|\.[0-9]+)\s*[+-]?\s*$", re.ASCII)
_FLOAT_WORDS = {"nan", "infinity", "+infinity", "-infinity"}
_HEX = "[0-9a-fA-F]"
_GUID_D = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_GUID = re.compile(rf"^\s*(?:{_GUID_D}|{_HEX}{{32}}|\{{{_GUID_D}\}}|\({_GUID_D}\))\s*$")
_ALPHA = re.compile(r"^[a-z]*$", re.IGNORECASE | re.ASCII)
_DATE_FORMATS = ("%m/%d/%Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%Y/%m/%d", "%d %B %Y", "%B %d, %Y")


def _integer(value: str, bits: int) -> int | None:
    if not _NUMBER_WS.match(value):
        return None
    number = int(value.strip())
    limit = 1 << (bits - 1)
    return number if -limit <= number < limit else None


def _is_datetime(value: str) -> bool:
    text = value.strip()
    try:
        datetime.fromisoformat(text)
        return True
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            datetime.strptime(text, fmt)
            return True
        except ValueError:
            continue
    return False


def _is_file_name(value: str) -> bool:
    last = value.rsplit("/", 1)[-1]
    dot = last.rfind(".")
    return 0 <= dot < len(last) - 1


def _int_args(name: str, arg: str | None, count: int) -> list[int]:
    parts = [] if arg is None else [p.strip() for p in arg.split(",")]
    if len(parts) != count:
        raise ValueError(f"route constraint {name!r} takes {count} argument(s), got {arg!r}")
    return [int(p) for p in parts]


def _constraint(name: str, arg: str | None) -> Callable[[str], bool]:
    """One ASP.NET Core inline route constraint (``DefaultInlineConstraintResolver``'s set), as a value check."""
    key = name.lower()
    simple: dict[str, Callable[[str], bool]] = {
        "int": lambda v: _integer(v, 32) is not None,
        "long": lambda v: _integer(v, 64) is not None,
        "bool": lambda v: v.strip().lower() in ("true", "false"),
        "guid": lambda v: _GUID.match(v) is not None,
        "alpha": lambda v: _ALPHA.match(v) is not None,
        "double": lambda v: _FLOAT.match(v) is not None or v.strip().lower() in _FLOAT_WORDS,
        "float": lambda v: _FLOAT.match(v) is not None or v.strip().lower() in _FLOAT_WORDS,
        "decimal": lambda v: _DECIMAL.match(v) is not None,
        "datetime": _is_datetime,
        "required": lambda v: v != "",
        "file": _is_file_name,
        "nonfile": lambda v: not _is_file_name(v),
    }
    if key in simple:
        return simple[key]
    if key == "regex":
        if arg is None:
            raise ValueError("route constraint 'regex' needs a pattern")
        # RegexRouteConstraint: IsMatch (not anchored) with IgnoreCase | CultureInvariant.
        pattern = re.compile(arg, re.IGNORECASE)
        return lambda v: pattern.search(v) is not None
    if key in ("minlength", "maxlength"):
        (bound,) = _int_args(key, arg, 1)
        return (lambda v: len(v) >= bound) if key == "minlength" else (lambda v: len(v) <= bound)
    if key == "length":
        bounds = _int_args(key, arg, 2 if arg is not None and "," in arg else 1)
        low, high = (bounds[0], bounds[0]) if len(bounds) == 1 else (bounds[0], bounds[1])
        return lambda v: low <= len(v) <= high
    if key in ("min", "max"):
        (bound,) = _int_args(key, arg, 1)
        if key == "min":
            return lambda v: (n := _integer(v, 64)) is not None and n >= bound
        return lambda v: (n := _integer(v, 64)) is not None and n <= bound
    if key == "range":
        low, high = _int_args(key, arg, 2)
        return lambda v: (n := _integer(v, 64)) is not None and low <= n <= high
    raise ValueError(f"unknown route constraint {name!r}")


def _template_chars(template: str) -> Iterator[tuple[str, bool]]:
    """The template's characters in order, as (character, escaped): ``{{`` and ``}}`` are one escaped brace each."""
    i = 0
    while i < len(template):
        pair = template[i : i + 2]
        if pair in ("{{", "}}"):
            yield pair[0], True
            i += 2
        else:
            yield template[i], False
            i += 1


def _read_parameter(chars: Iterator[tuple[str, bool]], template: str) -> str:
    """The text of the parameter whose ``{`` ``chars`` has just given (escaped braces unescaped), up to its ``}``."""
    inner: list[str] = []
    for char, escaped in chars:
        if not escaped and char == "}":
            return "".join(inner)
        if not escaped and char == "{":
            raise ValueError(f"unescaped '{{' inside a parameter of route template {template!r}")
        inner.append(char)
    raise ValueError(f"unterminated parameter in route template {template!r}")


_PARAM_HEAD = re.compile(r"(\*{1,2})?([^:=?*{}/]+)")


def _parse_parameter(text: str, template: str) -> _Param:
    head = _PARAM_HEAD.match(text)
    if head is None:
        raise ValueError(f"bad parameter {{{text}}} in route template {template!r}")
    catch_all = head.group(1) is not None
    name = head.group(2)
    rest = text[head.end() :]
    optional = rest.endswith("?")
    if optional:
        rest = rest[:-1]
    checks: list[Callable[[str], bool]] = []
    default: str | None = None
    i = 0
    while i < len(rest):
        if rest[i] == "=":
            default = rest[i + 1 :]
            break
        if rest[i] != ":":
            raise ValueError(f"bad parameter {{{text}}} in route template {template!r}")
        ident = re.match(r"[A-Za-z_]\w*", rest[i + 1 :])
        if ident is None:
            raise ValueError(f"bad constraint in {{{text}}} of route template {template!r}")
        i += 1 + ident.end()
        arg: str | None = None
        if i < len(rest) and rest[i] == "(":
            # The argument (a regex may hold parentheses) ends at a ')' followed by another constraint, a default
            # or the end of the parameter.
            close = i
            while True:
                close = rest.find(")", close + 1)
                if close < 0:
                    raise ValueError(f"unterminated constraint argument in route template {template!r}")
                if close + 1 == len(rest) or rest[close + 1] in ":=":
                    break
            arg = rest[i + 1 : close]
            i = close + 1
        checks.append(_constraint(ident.group(0), arg))
    return _Param(name=name, checks=tuple(checks), optional=optional, default=default, catch_all=catch_all)


def _parse_template(template: str) -> list[list[_Part]]:
    segments: list[list[_Part]] = [[]]
    literal: list[str] = []

    def flush() -> None:
        if literal:
            segments[-1].append("".join(literal))
            literal.clear()

    chars = _template_chars(template)
    for char, escaped in chars:
        if escaped:
            literal.append(char)
        elif char == "{":
            flush()
            segments[-1].append(_parse_parameter(_read_parameter(chars, template), template))
        elif char == "}":
            raise ValueError(f"unbalanced '}}' in route template {template!r}")
        elif char == "/":
            flush()
            segments.append([])
        else:
            literal.append(char)
    flush()
    if segments == [[]]:
        return []
    if any(not segment for segment in segments):
        raise ValueError(f"empty segment in route template {template!r}")
    return segments


class RouteTemplate:
    """An ASP.NET Core route template compiled to a case-insensitive regex plus per-parameter constraint checks."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.segments = _parse_template(template)
        self._params: dict[str, _Param] = {}
        pieces = [self._segment_regex(segment) for segment in self.segments]
        for index, segment in enumerate(self.segments):
            param = segment[0] if len(segment) == 1 else None
            if isinstance(param, _Param) and param.catch_all and index != len(self.segments) - 1:
                raise ValueError(f"a catch-all parameter must be the last segment of route template {template!r}")
        # Build from the right: a segment can be left out only if everything after it can be left out too.
        tail = ""
        omittable_tail = True
        for segment, piece in zip(reversed(self.segments), reversed(pieces), strict=True):
            only = segment[0] if len(segment) == 1 else None
            omittable = isinstance(only, _Param) and (only.optional or only.catch_all or only.default is not None)
            if omittable and omittable_tail:
                tail = f"(?:/{piece}{tail})?"
            else:
                tail = f"/{piece}{tail}"
                omittable_tail = False
        self._regex = re.compile(f"^{tail}/?$", re.IGNORECASE | re.DOTALL)

    def _group(self, param: _Param) -> str:
        group = f"p{len(self._params)}"
        self._params[group] = param
        return group

    def _segment_regex(self, segment: list[_Part]) -> str:
        if len(segment) == 1 and isinstance(segment[0], _Param):
            param = segment[0]
            return f"(?P<{self._group(param)}>{'.*' if param.catch_all else '[^/]+'})"
        out: list[str] = []
        for index, part in enumerate(segment):
            if isinstance(part, str):
                out.append(re.escape(part))
                continue
            if part.catch_all:
                raise ValueError(f"a catch-all parameter cannot share a segment in route template {self.template!r}")
            if not part.optional:
                # Greedy groups take the longest prefix, like ASP.NET matching complex segments right to left.
                out.append(f"(?P<{self._group(part)}>[^/]+)")
                continue
            if index != len(segment) - 1 or segment[index - 1] != ".":
                raise ValueError(
                    f"in a complex segment only a period may precede an optional parameter ({self.template!r})"
                )
            # "{name}.{ext?}": the dot goes with the extension, which is what follows the last dot.
            before = index - 2
            if before >= 0 and isinstance(segment[before], _Param):
                out[before] = out[before].replace("[^/]+)", "[^/]+?)")
            out[-1] = f"(?:\\.(?P<{self._group(part)}>[^/.]+))?"
        return "".join(out)

    def match(self, path: str) -> dict[str, str] | None:
        """The route values for ``path`` (decoded, ``%2F`` kept), or None if it does not match."""
        m = self._regex.match(path)
        if m is None:
            return None
        values: dict[str, str] = {}
        for group, param in self._params.items():
            value = m.group(group)
            if not value:
                if param.default is None:
                    continue
                value = param.default
            if not all(check(value) for check in param.checks):
                return None
            values[param.name] = value
        return values

    def precedence(self) -> str:
        """ASP.NET inbound precedence digits, one per segment; lower sorts first (literal 1 ... catch-all 5)."""
        digits = []
        for segment in self.segments:
            if len(segment) > 1:
                digits.append("2")
            elif isinstance(segment[0], str):
                digits.append("1")
            elif segment[0].catch_all:
                digits.append("5")
            else:
                digits.append("3" if segment[0].checks else "4")
        return "".join(digits)


def full_template(route_prefix: str, route: str) -> str:
    """``routePrefix`` + ``/`` + route, as the host joins them (leading and trailing slashes dropped)."""
    route = route.strip("/")
    prefix = route_prefix.strip("/")
    if not prefix:
        return route
    return f"{prefix}/{route}" if route else prefix


# --- request and response conversion --------------------------------------------------------------------------

_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _decode_path(raw: bytes) -> str:
    """Percent-decode a raw path except ``%2F``, as Kestrel does, so an encoded slash never splits a segment."""

    def replace(m: re.Match[bytes]) -> bytes:
        byte = bytes.fromhex(m.group(1).decode("ascii"))
        return m.group(0) if byte == b"/" else byte

    return _PERCENT.sub(replace, raw).decode("utf-8", errors="replace")


def _raw_path(scope: Scope) -> bytes:
    raw = scope.get("raw_path")
    if raw is None:
        raw = str(scope["path"]).encode("utf-8")
    root = str(scope.get("root_path", "")).encode("utf-8")
    if root and raw.startswith(root):
        raw = raw[len(root) :]
    return bytes(raw)


def route_path(scope: Scope) -> str:
    """The decoded request path routes are matched against."""
    return _decode_path(_raw_path(scope))


def _join(values: Iterable[str]) -> str:
    # Microsoft.Extensions.Primitives.StringValues.ToString(): non-empty values joined with ",".
    return ",".join(v for v in values if v)


def _host_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"host":
            return str(value.decode("latin-1"))
    return None


def base_url(scope: Scope) -> str:
    """Scheme, host and port of the socket the request came in on, e.g. ``http://127.0.0.1:7071``."""
    scheme = scope.get("scheme", "http")
    server = scope.get("server")
    if not server:
        return f"{scheme}://127.0.0.1"
    host, port = server[0], server[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def request_url(scope: Scope) -> str:
    """The URL the host gives the worker: ``{scheme}://{Host header}{path}{?query}``."""
    host = _host_header(scope)
    origin = f"{scope.get('scheme', 'http')}://{host}" if host else base_url(scope)
    path = _raw_path(scope).decode("latin-1")
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return f"{origin}{path}?{query}" if query else f"{origin}{path}"


def worker_headers(scope: Scope) -> dict[str, str]:
    grouped: dict[str, list[str]] = {}
    for name, value in scope.get("headers", []):
        grouped.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return {name: _join(values) for name, values in grouped.items()}


def worker_params(scope: Scope) -> dict[str, str]:
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    spelling: dict[str, str] = {}
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace"):
        # ASP.NET's query collection is case-insensitive; the first spelling of a key names it.
        first = spelling.setdefault(key.lower(), key)
        grouped.setdefault(first, []).append(value)
    return {key: joined for key, values in grouped.items() if (joined := _join(values))}


async def _read_body(request: Request, max_body_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body_bytes:
        raise RequestBodyTooLargeError(f"Content-Length {declared} exceeds {max_body_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise RequestBodyTooLargeError(f"body exceeds {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def to_func_request(
    request: Request, route_params: dict[str, str], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> func.HttpRequest:
    """The ``HttpRequest`` the Python worker would build for this request (raises ``RequestBodyTooLargeError``)."""
    body = await _read_body(request, max_body_bytes)
    return WorkerHttpRequest(
        method=request.method,
        url=request_url(request.scope),
        headers=worker_headers(request.scope),
        params=worker_params(request.scope),
        route_params=dict(route_params),
        body_type="bytes",
        body=body,
    )


_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")


def _encode_header(name: str, value: Any) -> tuple[bytes, bytes]:
    text = str(value)
    if _BAD_HEADER_CHARS.search(name) or _BAD_HEADER_CHARS.search(text):
        raise ValueError(f"response header {name!r} contains a control character")
    return name.lower().encode("latin-1"), text.encode("latin-1")


def _content_type(resp: functions_abc.HttpResponse) -> str:
    mimetype = str(resp.mimetype)
    return f"{mimetype}; charset={resp.charset}" if mimetype.startswith("text/") else mimetype


def to_starlette_response(resp: func.HttpResponse | str | bytes | None) -> Response:
    """Encode a function's return value as the worker and host would.

    Raises ``TypeError`` for values the worker cannot encode for an HTTP output (``None``, ``bytes``, anything but
    an ``HttpResponse`` or a ``str``); the host turns those into a failed invocation, i.e. a 500.
    """
    if isinstance(resp, str):
        return Response(resp.encode("utf-8"), status_code=200, media_type="text/plain; charset=utf-8")
    if not isinstance(resp, functions_abc.HttpResponse):
        raise TypeError(
            f"unable to encode outgoing TypedData: unsupported type for Python type {type(resp).__name__!r}"
        )
    headers = list(resp.headers.items())
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", _content_type(resp)))
    response = Response(resp.get_body() or b"", status_code=int(resp.status_code))
    computed = [(k, v) for k, v in response.raw_headers if k == b"content-length"]
    response.raw_headers = [
        _encode_header(name, value) for name, value in headers if name.lower() not in _FRAMING_HEADERS
    ] + computed
    return response


def _repeated_header_names(resp: object) -> set[str]:
    if not isinstance(resp, functions_abc.HttpResponse):
        return set()
    seen: set[str] = set()
    repeated: set[str] = set()
    for name, _ in resp.headers.items():
        key = name.lower()
        if key in seen and key != "set-cookie":
            repeated.add(key)
        seen.add(key)
    return repeated


# --- routes ---------------------------------------------------------------------------------------------------


class _Warnings:
    """Warn once per distinct message."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def once(self, key: tuple[str, ...], message: str, *args: object) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        logger.warning(message, *args)


class _HostOrder:
    """The app's HTTP routes in the order the Functions host tries them (by function name)."""

    def __init__(self, routes: list[FunctionRoute]) -> None:
        self.routes = sorted(routes, key=lambda r: (r.name.lower(), r.name))
        self.warnings = _Warnings()

    def pick(self, scope: Scope) -> FunctionRoute | None:
        for route in self.routes:
            if route.matches(scope)[0] is Match.FULL:
                return route
        return None


class FunctionRoute(BaseRoute):
    """One HTTP-triggered function: matches its route template and allowed methods, invokes it like the worker."""

    def __init__(
        self,
        function: FunctionInfo,
        *,
        route_prefix: str = "api",
        durable_client_json: DurableClientJson | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.function = function
        self.name = function.name
        route = function.trigger.get("route") or function.name
        try:
            self.template = RouteTemplate(full_template(route_prefix, str(route)))
        except ValueError as exc:
            raise ValueError(f"function {function.name}: {exc}") from exc
        self.path = "/" + self.template.template
        methods = function.trigger.get("methods")
        self.methods: frozenset[str] | None = frozenset(str(m).upper() for m in methods) if methods else None
        self._durable_client_json = durable_client_json
        self._max_body_bytes = max_body_bytes
        self._host_order: _HostOrder | None = None

    def __repr__(self) -> str:
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        return f"FunctionRoute({self.name!r}, {self.path!r}, methods={methods})"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        if self.methods is not None and str(scope["method"]).upper() not in self.methods:
            return Match.NONE, {}
        values = self.template.match(route_path(scope))
        if values is None:
            return Match.NONE, {}
        return Match.FULL, {"endpoint": self.function.func, "path_params": values}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            req = await to_func_request(
                request, dict(scope.get("path_params", {})), max_body_bytes=self._max_body_bytes
            )
        except RequestBodyTooLargeError as exc:
            logger.warning("%s: request refused with 413: %s", self.name, exc)
            await Response(status_code=413, headers={"connection": "close"})(scope, receive, send)
            return
        except ClientDisconnect:
            return
        self._warn_if_host_differs(scope)
        try:
            client_json = None
            if self.function.durable_client_param is not None and self._durable_client_json is not None:
                client_json = self._durable_client_json(base_url(scope))
            result = await ainvoke(self.function, req, durable_client_json=client_json)
            response = to_starlette_response(result)
        except Exception:
            # The client gets no exception text (it may carry PHI); the log gets all of it.
            logger.exception("Function %s failed", self.name)
            response = Response(status_code=500)
        else:
            self._warn_repeated_headers(result)
        await response(scope, receive, send)

    def _warn_if_host_differs(self, scope: Scope) -> None:
        if self._host_order is None:
            return
        host_pick = self._host_order.pick(scope)
        if host_pick is not None and host_pick is not self:
            self._host_order.warnings.once(
                ("order", self.name, host_pick.name),
                "%s %s went to %s (%s), but the Functions host tries routes by function name and would call %s (%s)",
                scope["method"],
                route_path(scope),
                self.name,
                self.path,
                host_pick.name,
                host_pick.path,
            )

    def _warn_repeated_headers(self, result: object) -> None:
        if self._host_order is None:
            return
        for header in sorted(_repeated_header_names(result)):
            self._host_order.warnings.once(
                ("header", self.name, header),
                "%s sends header %r more than once; the Python worker on the Functions host keeps only the last one",
                self.name,
                header,
            )


def http_routes(
    index: AppIndex,
    *,
    route_prefix: str = "api",
    durable_client_json: DurableClientJson | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> list[BaseRoute]:
    """One route per HTTP-triggered function, in ASP.NET precedence order (literal segments first)."""
    routes = [
        FunctionRoute(
            fn, route_prefix=route_prefix, durable_client_json=durable_client_json, max_body_bytes=max_body_bytes
        )
        for fn in index.by_trigger(HTTP)
    ]
    host_order = _HostOrder(routes)
    for route in routes:
        route._host_order = host_order
    width = max((len(r.template.precedence()) for r in routes), default=0)
    routes.sort(key=lambda r: (r.template.precedence().ljust(width, "0"), r.template.template.lower(), r.name))
    return list(routes)
