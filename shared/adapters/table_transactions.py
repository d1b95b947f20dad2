"""Entity-group transactions on Table Storage, without azure-core's heaviest multipart machinery.

A ``TableClient.submit_transaction`` sends one multipart/mixed ``$batch`` request. azure-core (1.41) builds it in
two ways that cost CPU and buy nothing for Table transactions (``docs/benchmarks-profile.md`` profiles them):

- it runs the per-part policies of every multipart request, and of every multipart response, by mapping them over a
  new ``ThreadPoolExecutor`` each time: three pools and a thread start per part for each transaction, which contend
  for the GIL under concurrency. The only per-part policy the Tables SDK installs is ``StorageHeadersPolicy`` (it
  stamps ``x-ms-date`` on each part; nothing on the response). Here the same policies run inline, in the calling
  thread, in part order, with the same exceptions.
- it assembles the body with the ``email`` package (a ``Message`` per part, then a MIME generator). Here the body is
  joined directly from the parts that the SDK serialises itself (``HttpRequest.serialize``), byte for byte what the
  ``email`` path produces; a test compares the two on every shape of transaction the adapters send. Only parts whose
  bytes the MIME generator would pass through unchanged (ASCII, every line break ``CRLF``) take this path; for
  anything else the SDK's own assembly runs.

Everything else is the SDK's: it parses the responses. The replacements are installed once per process, and only
while azure-core has the hooks with the shapes checked here; when it does not, the SDK's own behaviour is kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from azure.data.tables import TableClient

_log = logging.getLogger(__name__)
_installed: bool | None = None  # None until tried once; then whether the hooks are in place
_lock = threading.Lock()
CRLF = b"\r\n"


def submit_transaction(table: TableClient, operations: Sequence[Any]) -> list[Mapping[str, Any]]:
    """``table.submit_transaction(operations)`` with the lighter multipart handling; the SDK's results."""
    install_inline_multipart()
    return list(table.submit_transaction(list(operations)))


def install_inline_multipart() -> bool:
    """Run azure-core's multipart policies inline and join bodies directly from now on; True when installed."""
    global _installed
    if _installed is None:  # checked without the lock: every transaction passes here
        with _lock:
            if _installed is None:
                _installed = _install()
    return _installed


def passes_mime_unchanged(payload: bytes) -> bool:
    """Whether the ``email`` generator would write this part's bytes as they are: ASCII, every line break CRLF."""
    return payload.isascii() and payload.count(b"\r") == payload.count(CRLF) == payload.count(b"\n")


def joined_multipart_body(request: Any, content_index: int, fallback: Callable[[Any, int], int]) -> int:
    """The body of a multipart/mixed request (a Table ``$batch`` or its changeset), as azure-core's email path
    writes it: each part is ``--boundary``, its headers, a blank line and the part's own serialisation; nested
    changesets are prepared first. Returns the next Content-ID, as the SDK's helper does."""
    info = request.multipart_mixed_info
    if not info:
        return 0
    parts, boundary = info[0], info[2]
    if not boundary:
        return fallback(request, content_index)
    start, chunks = content_index, []
    for part in parts:
        if part.multipart_mixed_info:
            content_index = joined_multipart_body(part, content_index, fallback)
            payload = part.serialize()
            payload = payload[payload.index(b"--") :]  # the changeset's own body, without its request line
            headers = b"Content-Type: " + part.headers["Content-Type"].encode("ascii")
        else:
            payload = part.serialize()
            headers = b"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: %d" % (
                content_index
            )
            content_index += 1
        if not passes_mime_unchanged(payload):
            return fallback(request, start)
        chunks += [b"--", boundary.encode("ascii"), CRLF, headers, CRLF, CRLF, payload, CRLF]
    chunks += [b"--", boundary.encode("ascii"), b"--", CRLF]
    request.set_bytes_body(b"".join(chunks))
    request.headers["Content-Type"] = "multipart/mixed; boundary=" + boundary
    return content_index


def _install() -> bool:
    try:
        from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
        from azure.core.pipeline import _base as pipeline_base
        from azure.core.pipeline._tools import await_result
        from azure.core.pipeline.transport import _base as transport_base
        from azure.core.rest import _helpers as rest_helpers
        from azure.core.rest import _http_response_impl as rest_impl
        from azure.core.utils import _pipeline_transport_rest_shared as rest_shared
    except ImportError:  # pragma: no cover - a future azure-core without these modules
        _log.info("azure-core's multipart hooks moved; Table transactions use the SDK's own multipart handling")
        return False
    parts_helper, body_helper = rest_shared._parts_helper, rest_shared._prepare_multipart_body_helper
    body_modules = (rest_helpers, transport_base)
    if not (
        isinstance(pipeline_base.Pipeline.__dict__.get("_prepare_multipart_mixed_request"), staticmethod)
        and all(getattr(m, "_parts_helper", None) is parts_helper for m in (rest_impl, transport_base))
        and all(
            getattr(m, "_prepare_multipart_body_helper", None) is body_helper for m in (rest_helpers, transport_base)
        )
    ):  # pragma: no cover - as above
        _log.info("azure-core's multipart hooks changed; Table transactions use the SDK's own multipart handling")
        return False

    def prepare_parts(request: Any) -> None:
        info = request.multipart_mixed_info
        if not info:
            return
        parts, policies, options = info[0], info[1], info[3]
        for part in parts:
            if part.multipart_mixed_info:
                prepare_parts(part)
            part_request = PipelineRequest(part, PipelineContext(None, **options))
            for policy in policies:
                await_result(policy.on_request, part_request)

    def response_parts(response: Any) -> Iterator[Any]:
        if not response.content_type or not response.content_type.startswith("multipart/mixed"):
            raise ValueError("You can't get parts if the response is not multipart/mixed")
        responses = response._get_raw_parts()
        if response.request.multipart_mixed_info:
            policies = response.request.multipart_mixed_info[1]
            for part in responses:
                context = PipelineContext(None)
                part_request = PipelineRequest(part.request, context)
                part_response = PipelineResponse(part.request, part, context=context)
                for policy in policies:
                    await_result(policy.on_response, part_request, part_response)
        return responses  # type: ignore[no-any-return]

    def prepare_body(request: Any, content_index: int = 0) -> int:
        return joined_multipart_body(request, content_index, body_helper)

    pipeline_base.Pipeline._prepare_multipart_mixed_request = staticmethod(prepare_parts)  # type: ignore[method-assign]
    for module in (rest_impl, transport_base):
        setattr(module, "_parts_helper", response_parts)  # noqa: B010 - the modules do not export the name
    for module in body_modules:
        setattr(module, "_prepare_multipart_body_helper", prepare_body)  # noqa: B010 - as above
    return True
