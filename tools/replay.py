"""Replay failed, conflicting or expired changes through the gateway's API, with a progress bar.

    python -m tools.replay --api http://127.0.0.1:7071/api/v1 --status failed --target local-ehr --dry-run
    python -m tools.replay --api https://<app>.azurewebsites.net/api/v1 --status failed --token "$TOKEN"

It lists the matching changes first (a dry run stops there), then retries them one by one; a change that is no longer
retryable (already retried, or completed) is skipped, so running it twice writes once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from shared.api.caller_identity import encode_easyauth_principal


def headers_for(args: argparse.Namespace) -> dict[str, str]:
    if args.token:
        return {"Authorization": f"Bearer {args.token}"}
    # Local runs only: the Easy Auth header the local runtime trusts.
    return {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal(args.app, ["Writeback.Operate"], user_id=args.user)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--api", required=True, help="the API root, e.g. http://127.0.0.1:7071/api/v1")
    parser.add_argument("--status", choices=["failed", "conflict", "expired"], default="failed")
    parser.add_argument("--target")
    parser.add_argument("--error-code", help="e.g. downstream-rejected")
    parser.add_argument("--since", help="ISO 8601 time; changes updated since then")
    parser.add_argument("--until", help="ISO 8601 time; changes updated until then")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--dry-run", action="store_true", help="list what would be retried, and stop")
    parser.add_argument("--token", help="an Entra ID bearer token with the Writeback.Operate role")
    parser.add_argument("--app", default="replay-cli", help="local runs: the app id to act as")
    parser.add_argument("--user", default="operator", help="local runs: the user id to act as")
    args = parser.parse_args(argv)
    console = Console()
    filters: dict[str, Any] = {"status": args.status, "limit": args.limit, "dryRun": True}
    for key, value in (
        ("target", args.target),
        ("errorCode", args.error_code),
        ("since", args.since),
        ("until", args.until),
    ):
        if value:
            filters[key] = value
    with httpx.Client(headers=headers_for(args), timeout=60) as http:
        listed = http.post(f"{args.api}/changes/replay", json=filters)
        if listed.status_code != 200:
            console.print(f"[red]{listed.status_code}[/red] {listed.text}")
            return 1
        matched: list[str] = listed.json()["matched"]
        table = Table(title=f"{len(matched)} {args.status} change(s) match")
        table.add_column("change id")
        for change_id in matched:
            table.add_row(change_id)
        console.print(table)
        if args.dry_run:
            console.print("Dry run: nothing was retried.")
            return 0
        retried = skipped = failed = 0
        with Progress(console=console) as progress:
            task = progress.add_task("retrying", total=len(matched))
            for change_id in matched:
                resp = http.post(f"{args.api}/changes/{change_id}/retry")
                if resp.status_code == 202:
                    retried += 1
                elif resp.status_code == 409:
                    skipped += 1
                else:
                    failed += 1
                progress.advance(task)
        console.print(f"retried {retried}, skipped {skipped} (no longer retryable), errors {failed}")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
