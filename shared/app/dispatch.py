"""What the dispatcher decides for a queued message: start the change's orchestration, or nothing."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from shared.app.journal import ChangeJournal
from shared.core.errors import NotFoundError, PermanentError
from shared.core.models import ChangeMessage, ChangeStatus

log = logging.getLogger("writeback.dispatcher")


class UnknownChangeError(PermanentError):
    code = "unknown-change"
    title = "No change record for this message"


def should_start(journal: ChangeJournal, body: bytes) -> ChangeMessage | None:
    """The message whose change to start, or None when its orchestration already ran (a duplicate delivery)."""
    try:
        message = ChangeMessage.model_validate_json(body)
    except ValidationError:
        raise PermanentError(detail="the message is not a change message") from None
    try:
        record = journal.load(message.change_id, expect={ChangeStatus.ACCEPTED})
    except NotFoundError:
        raise UnknownChangeError(detail=f"no change record for change {message.change_id}") from None
    if record.status is not ChangeStatus.ACCEPTED:
        log.info("change %s is %s: duplicate message ignored", record.change_id, record.status.value)
        return None
    return message
