"""One contract suite for ``ApprovalNonceStore``, run against the in-memory fake and against Azurite."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.table_approval_nonce_store import TableApprovalNonceStore
from shared.app.approval_links import ApprovalLinkSigner, ApprovalNonceStore, ApprovalRound
from shared.core.errors import AlreadyExistsError
from shared.fakes.approval_nonces import FakeApprovalNonceStore
from tests.contract.tables import FAKE_OR_AZURITE, fake_or_table

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(hours=72)


@pytest.fixture(params=FAKE_OR_AZURITE)
def store(request: pytest.FixtureRequest) -> ApprovalNonceStore:
    return fake_or_table(request, FakeApprovalNonceStore, TableApprovalNonceStore)


def test_a_nonce_is_used_once(store: ApprovalNonceStore) -> None:
    store.use("nonce-0001", "change-1", EXPIRES)
    with pytest.raises(AlreadyExistsError):
        store.use("nonce-0001", "change-1", EXPIRES)
    with pytest.raises(AlreadyExistsError):
        store.use("nonce-0001", "change-1", EXPIRES + timedelta(days=1))


def test_approve_and_reject_tokens_have_their_own_nonces(store: ApprovalNonceStore) -> None:
    signer = ApprovalLinkSigner({"k1": bytes(range(32))}, clock=lambda: NOW)
    claims = [
        signer.verify(token)
        for token in signer.callback_tokens("change-2", EXPIRES, ApprovalRound(5, 0, "ab" * 32)).values()
    ]
    for c in claims:
        store.use(c.nonce, c.change_id, c.expires_at)
    for c in claims:
        with pytest.raises(AlreadyExistsError):
            store.use(c.nonce, c.change_id, c.expires_at)


def test_a_used_nonce_is_refused_on_any_change(store: ApprovalNonceStore) -> None:
    store.use("nonce-0002", "change-a", EXPIRES)
    with pytest.raises(AlreadyExistsError):
        store.use("nonce-0002", "change-a", EXPIRES)
    with pytest.raises(AlreadyExistsError):
        store.use("nonce-0002", "change-b", EXPIRES)
    # The refusals recorded nothing: another nonce on either change is still accepted once.
    store.use("nonce-0003", "change-b", EXPIRES)
    with pytest.raises(AlreadyExistsError):
        store.use("nonce-0003", "change-a", EXPIRES)


@pytest.mark.parametrize(("change_id", "nonce"), [("a/b#c?d\\e", "n%2F-0003"), ("tab\there", "nul\x00x-long")])
def test_unsafe_key_characters(store: ApprovalNonceStore, change_id: str, nonce: str) -> None:
    store.use(nonce, change_id, EXPIRES)
    with pytest.raises(AlreadyExistsError):
        store.use(nonce, change_id, EXPIRES)


def test_concurrent_use_of_one_nonce_has_exactly_one_winner(store: ApprovalNonceStore) -> None:
    winners: list[int] = []
    losers: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def use(i: int) -> None:
        barrier.wait()
        try:
            store.use("race-nonce", "change-race", EXPIRES)
            winners.append(i)
        except AlreadyExistsError:
            losers.append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(winners) == 1 and len(losers) == 7


def test_purge_expired(store: ApprovalNonceStore) -> None:
    store.use("old-nonce-1", "change-old", NOW - timedelta(hours=1))
    store.use("old-nonce-2", "change-old", NOW - timedelta(seconds=1))
    store.use("old-nonce-3", "change-older", NOW - timedelta(days=3))
    store.use("live-nonce", "change-live", NOW + timedelta(seconds=1))
    assert store.purge_expired(NOW) == 3
    assert store.purge_expired(NOW) == 0
    with pytest.raises(AlreadyExistsError):
        store.use("live-nonce", "change-live", NOW + timedelta(seconds=1))
    # A purged nonce could be inserted again; its token has expired by then, so verify() refuses it first.
    store.use("old-nonce-1", "change-old", NOW - timedelta(hours=1))


def test_naive_expiry_is_refused(store: ApprovalNonceStore) -> None:
    with pytest.raises(ValueError, match="timezone"):
        store.use("nonce-0004", "change-4", datetime(2026, 11, 28, 12))
