"""Entity-group transactions on Table Storage, without a thread pool per request.

azure-core (1.41) prepares the parts of every multipart/mixed request, and post-processes the parts of every
multipart/mixed response, by mapping the per-part policies over a brand-new ``ThreadPoolExecutor``: three pools,
and a thread start per part, for each ``TableClient.submit_transaction``. The only per-part policy the Tables SDK
installs is ``StorageHeadersPolicy`` (it stamps ``x-ms-date`` on each part; nothing on the response), so the pools
buy nothing and cost ~2 ms of CPU per transaction and a lot of GIL churn under concurrency (measured in
``docs/benchmarks.md``). :func:`submit_transaction` runs those policies inline, in the calling thread, in part
order — the same policies, the same order of effects, the same exceptions — and otherwise calls the SDK unchanged.

The replacement is installed once per process and only while azure-core still has the two hooks with the shapes
read here; if a future azure-core renames them, the SDK's own behaviour is kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from azure.data.tables import TableClient

_log = logging.getLogger(__name__)
_installed = False
_lock = threading.Lock()


def submit_transaction(table: TableClient, operations: Sequence[Any]) -> list[Mapping[str, Any]]:
    """``table.submit_transaction(operations)`` with the multipart policies run inline; the SDK's results."""
    install_inline_multipart()
    return list(table.submit_transaction(list(operations)))


def install_inline_multipart() -> bool:
    """Run azure-core's per-part multipart policies inline from now on; True when installed."""
    global _installed
    with _lock:
        if not _installed:
            _installed = _install()
        return _installed


def _install() -> bool:
    try:
        from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
        from azure.core.pipeline import _base as pipeline_base
        from azure.core.pipeline._tools import await_result
        from azure.core.pipeline.transport import _base as transport_base
        from azure.core.rest import _http_response_impl as rest_impl
        from azure.core.utils import _pipeline_transport_rest_shared as rest_shared
    except ImportError:  # pragma: no cover - a future azure-core without these modules
        _log.info("azure-core's multipart hooks moved; Table transactions use the SDK's thread pools")
        return False
    original = rest_shared._parts_helper
    if not (
        isinstance(pipeline_base.Pipeline.__dict__.get("_prepare_multipart_mixed_request"), staticmethod)
        and getattr(rest_impl, "_parts_helper", None) is original
        and getattr(transport_base, "_parts_helper", None) is original
    ):  # pragma: no cover - as above
        _log.info("azure-core's multipart hooks changed; Table transactions use the SDK's thread pools")
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

    pipeline_base.Pipeline._prepare_multipart_mixed_request = staticmethod(prepare_parts)  # type: ignore[method-assign]
    for module in (rest_impl, transport_base):
        setattr(module, "_parts_helper", response_parts)  # noqa: B010 - the modules do not export the name
    return True
