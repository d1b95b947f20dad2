"""The ``Prefer`` request header (RFC 7240) as the change API honours it: ``wait=N``.

``Prefer: wait=10`` asks the gateway to hold its answer up to 10 seconds, until the change has ended or waits for a
person. Preferences are hints (RFC 7240 §2): one the gateway does not know, or a malformed ``wait``, is ignored,
never refused; a wait above ``MAX_WAIT_SECONDS`` is cut to it, and ``Preference-Applied`` says what was honoured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_WAIT_SECONDS = 30
_WAIT = re.compile(r'^\s*wait\s*=\s*"?([0-9]{1,9})"?\s*$', re.IGNORECASE)


def requested_wait(headers: Mapping[str, str]) -> int | None:
    """Seconds the caller asks to wait (capped at ``MAX_WAIT_SECONDS``), or None when it asks nothing usable.

    Several ``Prefer`` headers arrive joined by commas; each preference may carry parameters after ``;``. The first
    ``wait`` counts (RFC 7240 §2: a repeated preference is ignored).
    """
    raw = ",".join(value for key, value in headers.items() if key.lower() == "prefer")
    for preference in raw.split(","):
        match = _WAIT.match(preference.split(";", 1)[0])
        if match:
            return min(int(match.group(1)), MAX_WAIT_SECONDS)
    return None


def preference_applied(seconds: int) -> dict[str, str]:
    return {"Preference-Applied": f"wait={seconds}"}
