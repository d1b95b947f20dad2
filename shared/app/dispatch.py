"""What the dispatcher reads from a queued message: the change to start.

It reads no record (one Table round trip less per change): the orchestration's instance id is the change id, so a
start for a change already running is refused by Durable, and the first step decides on the stored record (a change
past ``accepted`` is left as it is; a message naming no change ends its orchestration at once).
"""

from __future__ import annotations

from pydantic import ValidationError

from shared.core.errors import PermanentError
from shared.core.models import ChangeMessage


def parse_message(body: bytes) -> ChangeMessage:
    """The message's change; a body that is not a change message is a ``PermanentError`` (dead-lettered)."""
    try:
        return ChangeMessage.model_validate_json(body)
    except ValidationError:
        raise PermanentError(detail="the message is not a change message") from None
