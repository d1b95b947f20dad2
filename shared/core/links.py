"""The gateway's own URLs for a change: where callers poll it, decide on it and read its lineage."""

from __future__ import annotations

API_PREFIX = "/api/v1"


def change_links(base_url: str, change_id: str) -> dict[str, str]:
    root = f"{base_url.rstrip('/')}{API_PREFIX}/changes/{change_id}"
    return {"self": root, "approval": f"{root}/approval", "lineage": f"{root}/lineage"}
