"""A proxy that counts calls to a port's methods: each call of a storage port is one round trip to the store.

Given ``spent``, it also adds the CPU seconds spent inside the port's methods to ``spent[0]`` (the benchmark keeps
the fakes' own CPU apart from the project's that way).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any


class CountingProxy:
    def __init__(self, inner: Any, counter: Counter[str], name: str, *, spent: list[float] | None = None) -> None:
        self._inner, self._counter, self._name, self._spent = inner, counter, name, spent

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._counter[f"{self._name}.{attr}"] += 1
            if self._spent is None:
                return value(*args, **kwargs)
            start = time.process_time()
            try:
                return value(*args, **kwargs)
            finally:
                self._spent[0] += time.process_time() - start

        return counted
