"""PayloadStore on Azure Blob Storage: small bodies inline in the change record, large ones as a blob claim check."""

from __future__ import annotations

import contextlib
import hashlib

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from shared.adapters.storage_edge import storage_adapter
from shared.core.errors import NotFoundError
from shared.core.record_parts import PayloadRef


def blob_name_for(change_id: str, name: str = "request") -> str:
    return f"changes/{change_id}/{name}.json"


def inline_ref(body: bytes, inline_max_bytes: int) -> PayloadRef | None:
    """The inline reference for ``body`` when it is small UTF-8 text, else None."""
    if len(body) > inline_max_bytes:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return PayloadRef(kind="inline", sha256=hashlib.sha256(body).hexdigest(), size=len(body), inline=text)


@storage_adapter("ensure_container")
class BlobPayloadStore:
    def __init__(self, service: BlobServiceClient, container: str, *, inline_max_bytes: int = 30_000) -> None:
        self._container: ContainerClient = service.get_container_client(container)
        self._inline_max = inline_max_bytes

    def ensure_container(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()

    def put(self, change_id: str, body: bytes, *, name: str = "request") -> PayloadRef:
        ref = inline_ref(body, self._inline_max)
        if ref is not None:
            return ref
        blob = blob_name_for(change_id, name)
        self._container.upload_blob(
            blob, body, overwrite=True, content_settings=ContentSettings(content_type="application/json")
        )
        return PayloadRef(kind="blob", sha256=hashlib.sha256(body).hexdigest(), size=len(body), blob_name=blob)

    def get(self, ref: PayloadRef) -> bytes:
        if ref.kind == "inline":
            return (ref.inline or "").encode("utf-8")
        assert ref.blob_name is not None
        try:
            return self._container.download_blob(ref.blob_name).readall()
        except ResourceNotFoundError as exc:
            raise NotFoundError(f"payload blob {ref.blob_name} not found") from exc

    def delete(self, ref: PayloadRef) -> None:
        if ref.kind != "blob" or ref.blob_name is None:
            return
        with contextlib.suppress(ResourceNotFoundError):
            # Snapshots go with the blob; a soft-deleted blob stays restorable for the account's retention period.
            self._container.delete_blob(ref.blob_name, delete_snapshots="include")
