"""The runtime suite's sample function apps (under ``apps/``), and a part of one to run alone."""

from __future__ import annotations

from pathlib import Path

from devhost.app_index import AppIndex

APPS = Path(__file__).parent / "apps"


def only(index: AppIndex, *names: str) -> AppIndex:
    """``index`` cut down to the functions ``names``."""
    return AppIndex(functions={n: index.functions[n] for n in names}, app=index.app)
