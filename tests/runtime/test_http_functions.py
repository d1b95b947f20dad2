"""The devhost HTTP layer: route templates, host-like request/response conversion, concurrency, the durable client.

Most cases go through Starlette's TestClient; concurrency, binary bodies, repeated headers, the body cap and the
durable client also go through a real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from devhost.app_index import AppIndex, load_app
from devhost.durable.client_api import client_binding_json
from devhost.http_functions import FunctionRoute, RouteTemplate, http_routes, to_starlette_response
from devhost.http_server import ServerHandle, build_asgi_app, read_host_json, route_prefix_from, serve

with warnings.catch_warnings():
    # Starlette 1.10 asks for the httpx2 package behind its TestClient; with httpx it works the same but warns.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

APPS = Path(__file__).parent / "apps"
REPO = Path(__file__).resolve().parents[2]
GUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


class RecordingClientJson:
    """The durable client binding the runtime serves (task hub ``TestHub``), recording the base URLs asked for."""

    def __init__(self) -> None:
        self.base_urls: list[str] = []

    def __call__(self, base_url: str) -> str:
        self.base_urls.append(base_url)
        return client_binding_json(base_url, "TestHub")


@pytest.fixture(scope="module")
def index() -> AppIndex:
    return load_app("http_app", APPS)


@pytest.fixture(scope="module")
def client_json() -> RecordingClientJson:
    return RecordingClientJson()


@pytest.fixture(scope="module")
def app(index: AppIndex, client_json: RecordingClientJson) -> Starlette:
    return build_asgi_app(index, route_prefix="api", durable_client_json=client_json)


@pytest.fixture(scope="module")
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def server(index: AppIndex, client_json: RecordingClientJson) -> Iterator[ServerHandle]:
    asgi = build_asgi_app(index, route_prefix="api", durable_client_json=client_json, max_body_bytes=1024 * 1024)
    handle = serve(asgi, port=0).start().wait_ready()
    yield handle
    handle.stop()


def echo(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


# --- routing ---------------------------------------------------------------------------------------------------


def test_route_params_method_and_url(client: TestClient) -> None:
    data = echo(client.get("/api/echo/a/b?x=1"))
    assert data["function"] == "echo"
    assert data["method"] == "GET"
    assert data["url"] == "http://testserver/api/echo/a/b?x=1"
    assert data["route_params"] == {"rest": "a/b"}


def test_typed_constraints_pick_the_function(client: TestClient) -> None:
    assert echo(client.get("/api/items/42"))["function"] == "item_by_int"
    assert echo(client.get("/api/items/-7"))["route_params"] == {"id": "-7"}
    assert echo(client.get(f"/api/items/{GUID}"))["function"] == "item_by_guid"
    assert echo(client.get(f"/api/items/{GUID.replace('-', '')}"))["function"] == "item_by_guid"
    assert echo(client.get("/api/items/abc"))["function"] == "item_by_alpha"
    assert client.get("/api/items/abc1").status_code == 404
    assert client.get("/api/items/99999999999").status_code == 404  # outside int32, not alpha, not a guid


def test_regex_and_range_constraints(client: TestClient) -> None:
    assert echo(client.get("/api/codes/ABC-12"))["route_params"] == {"code": "ABC-12"}
    # RegexRouteConstraint matches with IgnoreCase.
    assert echo(client.get("/api/codes/abc-12"))["function"] == "code_by_regex"
    assert client.get("/api/codes/AB-1").status_code == 404
    assert echo(client.get("/api/range/10"))["route_params"] == {"n": "10"}
    assert client.get("/api/range/0").status_code == 404
    assert client.get("/api/range/x").status_code == 404


def test_optional_parameter(client: TestClient) -> None:
    assert echo(client.get("/api/opt"))["route_params"] == {}
    assert echo(client.get("/api/opt/"))["route_params"] == {}
    assert echo(client.get("/api/opt/7"))["route_params"] == {"id": "7"}
    assert client.get("/api/opt/7/8").status_code == 404


def test_catch_all(client: TestClient) -> None:
    assert echo(client.get("/api/files/a/b/c.txt"))["route_params"] == {"path": "a/b/c.txt"}
    assert echo(client.get("/api/files"))["route_params"] == {}


def test_encoded_slash_stays_in_its_segment(client: TestClient) -> None:
    data = echo(client.get("/api/echo/a%2Fb/c%20d"))
    assert data["route_params"] == {"rest": "a%2Fb/c d"}
    assert data["url"] == "http://testserver/api/echo/a%2Fb/c%20d"
    assert client.get("/api/items/1%2F2").status_code == 404


def test_literal_segment_wins_and_host_order_is_reported(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="devhost.http"):
        assert echo(client.get("/api/v1/changes/summary"))["function"] == "change_summary"
    assert "would call a_change_by_id" in caplog.text
    assert echo(client.get("/api/v1/changes/123"))["route_params"] == {"id": "123"}


def test_routes_are_in_precedence_order(index: AppIndex) -> None:
    names = [r.name for r in http_routes(index) if isinstance(r, FunctionRoute)]
    assert names.index("change_summary") < names.index("a_change_by_id")
    assert names.index("item_by_guid") < names.index("echo")
    assert names[-2:] == ["echo", "catch_all"] or names[-2:] == ["catch_all", "echo"]


def test_wrong_method_is_404_and_falls_through(client: TestClient) -> None:
    assert echo(client.post("/api/post-only"))["function"] == "post_only"
    assert client.get("/api/post-only").status_code == 404
    assert client.put("/api/v1/changes/summary").status_code == 404
    # The method is a route constraint: DELETE skips change_summary (GET only) and lands on {id}.
    assert echo(client.delete("/api/v1/changes/summary"))["route_params"] == {"id": "summary"}


def test_methods_absent_means_all(client: TestClient) -> None:
    assert echo(client.patch("/api/echo/x"))["method"] == "PATCH"
    assert echo(client.request("PROPFIND", "/api/echo/x"))["method"] == "PROPFIND"


def test_matching_is_case_insensitive(client: TestClient) -> None:
    data = echo(client.get("/API/V1/Changes/Summary"))
    assert data["function"] == "change_summary"
    assert data["url"] == "http://testserver/API/V1/Changes/Summary"


def test_route_defaults_to_function_name(client: TestClient) -> None:
    assert echo(client.get("/api/default_route"))["function"] == "default_route"


def test_trailing_slash_matches_but_not_a_double_one(client: TestClient) -> None:
    assert echo(client.get("/api/default_route/"))["function"] == "default_route"
    resp = client.get("/api/default_route//", follow_redirects=False)
    assert resp.status_code == 404


def test_empty_route_prefix(index: AppIndex) -> None:
    with TestClient(build_asgi_app(index, route_prefix="")) as c:
        assert echo(c.get("/echo/x"))["route_params"] == {"rest": "x"}
        assert c.get("/api/default_route").status_code == 404


def test_extra_routes_come_first(index: AppIndex) -> None:
    async def special(request: Request) -> PlainTextResponse:
        return PlainTextResponse("runtime")

    app = build_asgi_app(index, route_prefix="api", extra_routes=[Route("/api/echo/special", special)])
    with TestClient(app) as c:
        assert c.get("/api/echo/special").text == "runtime"
        assert echo(c.get("/api/echo/other"))["function"] == "echo"


# --- request conversion ----------------------------------------------------------------------------------------


def test_query_parameters_as_the_host_gives_them(client: TestClient) -> None:
    params = echo(client.get("/api/echo/q?a=1&a=2&A=3&empty=&flag&plus=a+b&enc=%C3%BC&x=&x=9"))["params"]
    # Keys are case-insensitive and repeats joined with ","; empty values are dropped.
    assert params == {"a": "1,2,3", "plus": "a b", "enc": "ü", "x": "9"}


def test_headers_lower_cased_and_repeats_joined(client: TestClient) -> None:
    headers = echo(
        client.get("/api/echo/h", headers=[("X-Multi", "a"), ("x-multi", "b"), ("X-Empty", ""), ("X-One", "1")])
    )["headers"]
    assert headers["x-multi"] == "a,b"
    assert headers["x-empty"] == ""
    assert headers["x-one"] == "1"
    assert headers["host"] == "testserver"


def test_binary_body_is_passed_untouched(client: TestClient) -> None:
    body = bytes(range(256)) + b"\xff\xfe not utf-8"
    data = echo(client.post("/api/echo/bin", content=body, headers={"content-type": "text/plain"}))
    assert bytes.fromhex(data["body_hex"]) == body


def test_async_function(client: TestClient) -> None:
    data = echo(client.post("/api/async-echo", content=b'{"k": 1}'))
    assert data["function"] == "async_echo"
    assert bytes.fromhex(data["body_hex"]) == b'{"k": 1}'


def test_body_cap_gives_413(index: AppIndex) -> None:
    with TestClient(build_asgi_app(index, route_prefix="api", max_body_bytes=10)) as c:
        assert c.post("/api/echo/x", content=b"0123456789").status_code == 200
        assert c.post("/api/echo/x", content=b"0123456789A").status_code == 413

        def chunks() -> Iterator[bytes]:
            yield b"012345"
            yield b"6789AB"

        assert c.post("/api/echo/x", content=chunks()).status_code == 413


# --- response conversion ---------------------------------------------------------------------------------------


def test_str_return_is_plain_text(client: TestClient) -> None:
    resp = client.get("/api/text")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.text == "plain text ü"


def test_mimetype_charset_and_status(client: TestClient) -> None:
    resp = client.get("/api/html")
    assert resp.status_code == 201
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.text == "<p>hi</p>"
    assert client.get("/api/echo/x").headers["content-type"] == "application/json"


def test_exception_is_500_without_details(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="devhost.http"):
        resp = client.get("/api/boom")
    assert resp.status_code == 500
    assert resp.content == b""
    assert "Function boom failed" in caplog.text
    assert "secret diagnosis" in caplog.text  # logged, never sent


def test_unencodable_return_is_500(client: TestClient) -> None:
    assert client.get("/api/returns-none").status_code == 500
    with pytest.raises(TypeError):
        to_starlette_response(b"raw bytes")
    with pytest.raises(TypeError):
        to_starlette_response(None)


def test_response_keeps_repeated_headers() -> None:
    resp = func.HttpResponse(b"x", headers={"X-A": "1"}, mimetype="application/octet-stream")
    resp.headers.add_header("Link", "<a>")
    resp.headers.add_header("Link", "<b>")
    out = to_starlette_response(resp)
    assert [v for k, v in out.raw_headers if k == b"link"] == [b"<a>", b"<b>"]
    assert (b"content-type", b"application/octet-stream") in out.raw_headers
    assert (b"content-length", b"1") in out.raw_headers


# --- durable client --------------------------------------------------------------------------------------------


def test_durable_client_check_status_points_at_the_request_host(
    server: ServerHandle, client_json: RecordingClientJson
) -> None:
    resp = httpx.post(f"{server.base_url}/api/orchestrations/start")
    assert resp.status_code == 202, resp.text
    assert client_json.base_urls[-1] == server.base_url
    expected = f"{server.base_url}/runtime/webhooks/durabletask/instances/some-id?taskHub=TestHub&connection=Storage"
    assert resp.headers["location"] == expected
    assert resp.headers["retry-after"] == "10"
    payload = resp.json()
    assert payload["id"] == "some-id"
    assert payload["statusQueryGetUri"] == expected
    assert payload["sendEventPostUri"].startswith(f"{server.base_url}/runtime/webhooks/durabletask/instances/some-id/")

    # The SDK rewrites the URLs' origin to the request URL's, which carries the Host header.
    resp = httpx.post(f"{server.base_url}/api/orchestrations/start", headers={"host": f"localhost:{server.port}"})
    assert resp.headers["location"].startswith(f"http://localhost:{server.port}/runtime/webhooks/durabletask/")
    assert client_json.base_urls[-1] == server.base_url


def test_durable_client_needs_management_urls(index: AppIndex) -> None:
    def minimal(base_url: str) -> str:
        return json.dumps(
            {
                "taskHubName": "TestHub",
                "creationUrls": {},
                "managementUrls": {},
                "rpcBaseUrl": f"{base_url}/runtime/webhooks/durabletask/",
            }
        )

    with TestClient(build_asgi_app(index, route_prefix="api", durable_client_json=minimal)) as c:
        # create_check_status_response reads managementUrls["id"] and ["statusQueryGetUri"].
        assert c.post("/api/orchestrations/start").status_code == 500
    with TestClient(build_asgi_app(index, route_prefix="api")) as c:
        assert c.post("/api/orchestrations/start").status_code == 500


# --- a real server ---------------------------------------------------------------------------------------------


def test_real_server_binary_body_and_repeated_headers(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="devhost.http"):
        resp = httpx.get(f"{server.base_url}/api/binary")
    assert resp.status_code == 200
    assert resp.content == bytes(range(256))
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.headers.get_list("set-cookie") == ["a=1; Path=/; HttpOnly", "b=2; Path=/"]
    assert resp.headers.get_list("link") == ["</p/1>; rel=first", "</p/2>; rel=next"]
    assert resp.headers["x-single"] == "one"
    assert "'link' more than once" in caplog.text


def test_real_server_echo_and_binary_request(server: ServerHandle) -> None:
    body = bytes(range(256))
    data = echo(
        httpx.post(
            f"{server.base_url}/api/echo/x/y?b=1&b=2",
            content=body,
            headers=[("x-dup", "1"), ("x-dup", "2")],
        )
    )
    assert data["url"] == f"{server.base_url}/api/echo/x/y?b=1&b=2"
    assert data["params"] == {"b": "1,2"}
    assert data["headers"]["x-dup"] == "1,2"
    assert bytes.fromhex(data["body_hex"]) == body


def test_real_server_body_cap(server: ServerHandle) -> None:
    resp = httpx.post(f"{server.base_url}/api/echo/x", content=b"x" * (1024 * 1024 + 1))
    assert resp.status_code == 413
    assert httpx.get(f"{server.base_url}/api/echo/x").status_code == 200


def test_real_server_runs_requests_concurrently(server: ServerHandle) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            return await asyncio.gather(*(c.get("/api/slow") for _ in range(10)))

    started = time.perf_counter()
    responses = asyncio.run(burst())
    elapsed = time.perf_counter() - started
    assert [r.text for r in responses] == ["done"] * 10
    # Ten 0.3 s sync functions, serialised, would take 3 s.
    print(f"10 concurrent 0.3 s requests: {elapsed:.2f} s")
    assert elapsed < 1.5, elapsed


def test_serve_refuses_non_loopback(app: Starlette) -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve(app, host="0.0.0.0")  # noqa: S104 - the point is that it is refused
    with pytest.raises(RuntimeError):
        serve(app, port=0).wait_ready()


def test_server_context_manager_and_restart(app: Starlette) -> None:
    handle = serve(app, port=0)
    with handle:
        assert httpx.get(f"{handle.base_url}/api/text").text == "plain text ü"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{handle.base_url}/api/text")


# --- templates and host.json -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("api/f/{name}.{ext?}", "/api/f/a.b.c", {"name": "a.b", "ext": "c"}),
        ("api/f/{name}.{ext?}", "/api/f/abc", {"name": "abc"}),
        ("api/f/{a}-{b}", "/api/f/x-y-z", {"a": "x-y", "b": "z"}),
        ("api/d/{x=5}", "/api/d", {"x": "5"}),
        ("api/d/{x=5}", "/api/d/9", {"x": "9"}),
        ("api/g/{id:guid}", f"/api/g/{{{GUID}}}", {"id": f"{{{GUID}}}"}),
        ("api/g/{id:guid}", "/api/g/not-a-guid", None),
        ("api/b/{flag:bool}", "/api/b/True", {"flag": "True"}),
        ("api/b/{flag:bool}", "/api/b/yes", None),
        ("api/l/{s:minlength(3):maxlength(4)}", "/api/l/abcd", {"s": "abcd"}),
        ("api/l/{s:minlength(3):maxlength(4)}", "/api/l/ab", None),
        ("api/l/{s:length(2)}", "/api/l/ab", {"s": "ab"}),
        ("api/n/{v:double}", "/api/n/1.5e3", {"v": "1.5e3"}),
        ("api/n/{v:long:min(5)}", "/api/n/4", None),
        ("api/r/{v:regex(^(a|b)+$)}", "/api/r/abba", {"v": "abba"}),
        ("api/r/{v:regex(^\\d{{3}}$)}", "/api/r/123", {"v": "123"}),
        ("api/r/{v:regex(^\\d{{3}}$)}", "/api/r/1234", None),
        ("", "/", {}),
    ],
)
def test_route_templates(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert RouteTemplate(template).match(path) == expected


@pytest.mark.parametrize(
    "template",
    ["api/{x:nosuch}", "api/{*rest}/more", "api/{a}-{b?}", "api/{unterminated", "api//x", "api/{x:regex(}"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each refusal has its own message
        RouteTemplate(template)


def test_host_json_route_prefix(tmp_path: Path) -> None:
    assert route_prefix_from(read_host_json(REPO)) == ""  # the product: its routes carry "api/v1/"
    assert read_host_json(tmp_path) == {}
    assert route_prefix_from({}) == "api"
    (tmp_path / "host.json").write_text('{"version": "2.0", "Extensions": {"HTTP": {"RoutePrefix": ""}}}')
    assert route_prefix_from(read_host_json(tmp_path)) == ""
    assert route_prefix_from({"extensions": {"http": {"routePrefix": "/v2/"}}}) == "v2"


def test_the_listener_disables_nagle_so_kept_alive_responses_are_not_held_back() -> None:
    """Without TCP_NODELAY a response's body waited ~40 ms behind its headers for the client's delayed ACK."""
    handle = serve(build_asgi_app(load_app("http_app", APPS), route_prefix="api"), port=0).start()
    try:
        handle.wait_ready()
        with socket.create_connection(("127.0.0.1", handle.port)) as client:
            client.sendall(b"GET /api/items/5 HTTP/1.1\r\nHost: x\r\n\r\n")
            client.settimeout(5)
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        assert handle._sockets
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0 for s in handle._sockets)
    finally:
        handle.stop()
