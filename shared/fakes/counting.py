"""A proxy that counts calls to a port's methods: each call of a storage port is one round trip to the store."""

from __future__ import annotations

from collections import Counter
from typing import Any


class CountingProxy:
    def __init__(self, inner: Any, counter: Counter[str], name: str) -> None:
        self._inner, self._counter, self._name = inner, counter, name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._counter[f"{self._name}.{attr}"] += 1
            return value(*args, **kwargs)

        return counted
