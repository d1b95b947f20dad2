"""Approval link tokens: signing, verification, key rotation, expiry, malformed input, and single use."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.app.approval_links import ApprovalLinkSigner, ApprovalRound, parse_signing_keys
from shared.core.errors import AlreadyExistsError, ConfigurationError, RequestError, UnauthenticatedError
from shared.fakes.approval_nonces import FakeApprovalNonceStore
from tests.support import ManualClock

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(hours=72)
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 140))
CHANGE = "3f1c2b9e-5d4a-4b7e-9a61-0c2d3e4f5a6b"
ROUND = ApprovalRound(sequence=7, retries=0, diff_hash="0123456789abcdef")
Clock = ManualClock[datetime]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge(payload: object, key: bytes = KEY_A, *, raw: bytes | None = None) -> str:
    """A token signed with ``key`` over any payload, to reach the checks behind the signature."""
    body = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
    return f"{b64(body)}.{b64(hmac.new(key, body, hashlib.sha256).digest())}"


def good_payload(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {"c": CHANGE, "d": "approve", "e": int(EXPIRES.timestamp()), "k": "a", "n": "n" * 22}
    payload.update(overrides)
    return payload


@pytest.fixture
def clock() -> Clock:
    return ManualClock(NOW)


@pytest.fixture
def signer(clock: Clock) -> ApprovalLinkSigner:
    return ApprovalLinkSigner({"a": KEY_A}, clock=clock)


def refused(signer: ApprovalLinkSigner, token: str, change_id: str | None = None) -> UnauthenticatedError:
    """The 401 that ``signer`` answers ``token`` with."""
    with pytest.raises(UnauthenticatedError) as exc:
        signer.verify(token, change_id=change_id)
    assert exc.value.status == 401 and exc.value.code == "unauthenticated"
    return exc.value


# --- round trip and format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_sign_verify_round_trip(signer: ApprovalLinkSigner, decision: str) -> None:
    token = signer.sign(CHANGE, decision, EXPIRES, nonce="nonce-1234")  # type: ignore[arg-type]
    claims = signer.verify(token, change_id=CHANGE)
    assert claims.change_id == CHANGE
    assert claims.decision == decision
    assert claims.expires_at == EXPIRES
    assert claims.nonce == "nonce-1234"
    assert claims.kid == "a"
    assert signer.verify(token).change_id == CHANGE


def test_token_format_is_payload_dot_hmac(signer: ApprovalLinkSigner) -> None:
    token = signer.sign(CHANGE, "reject", EXPIRES + timedelta(microseconds=999), nonce="nonce-1234")
    payload_part, signature_part = token.split(".")
    raw = unb64(payload_part)
    assert json.loads(raw) == {"c": CHANGE, "d": "reject", "e": int(EXPIRES.timestamp()), "k": "a", "n": "nonce-1234"}
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), sort_keys=True).encode()
    assert unb64(signature_part) == hmac.new(KEY_A, raw, hashlib.sha256).digest()
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_each_signature_gets_a_fresh_nonce(signer: ApprovalLinkSigner) -> None:
    nonces = {signer.verify(signer.sign(CHANGE, "approve", EXPIRES)).nonce for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) >= 16 for n in nonces)


def test_sign_refuses_naive_expiry_and_bad_arguments(signer: ApprovalLinkSigner) -> None:
    with pytest.raises(ValueError, match="timezone"):
        signer.sign(CHANGE, "approve", datetime(2026, 11, 28, 12))
    with pytest.raises(ValueError, match="decision"):
        signer.sign(CHANGE, "maybe", EXPIRES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonce"):
        signer.sign(CHANGE, "approve", EXPIRES, nonce="short")
    with pytest.raises(ValueError, match="change_id"):
        signer.sign("", "approve", EXPIRES)


def test_key_material_is_not_in_repr(signer: ApprovalLinkSigner) -> None:
    text = repr(signer)
    assert "'a'" in text and KEY_A.hex() not in text and b64(KEY_A) not in text and repr(KEY_A) not in text


# --- tampering and keys ---------------------------------------------------------------------------------------


def test_tampered_payload_is_refused(signer: ApprovalLinkSigner) -> None:
    token = signer.sign(CHANGE, "reject", EXPIRES)
    payload_part, signature_part = token.split(".")
    payload = json.loads(unb64(payload_part))
    payload["d"] = "approve"
    tampered = b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()) + "." + signature_part
    refused(signer, tampered)


def test_extended_expiry_is_refused(signer: ApprovalLinkSigner) -> None:
    payload_part, signature_part = signer.sign(CHANGE, "approve", EXPIRES).split(".")
    payload = json.loads(unb64(payload_part))
    payload["e"] += 86400 * 365
    with pytest.raises(UnauthenticatedError):
        signer.verify(b64(json.dumps(payload, separators=(",", ":")).encode()) + "." + signature_part)


@pytest.mark.parametrize("position", [0, 10, 21, 42])
def test_tampered_signature_is_refused(signer: ApprovalLinkSigner, position: int) -> None:
    payload_part, signature_part = signer.sign(CHANGE, "approve", EXPIRES).split(".")
    sig = bytearray(unb64(signature_part))
    sig[min(position, len(sig) - 1)] ^= 0x01
    refused(signer, f"{payload_part}.{b64(bytes(sig))}")


@pytest.mark.parametrize(
    ("their_kid", "their_key"),
    [pytest.param("a", KEY_B, id="another-key-same-kid"), pytest.param("zz", KEY_A, id="unknown-kid")],
)
def test_a_token_signed_with_a_key_we_do_not_hold_is_refused(clock: Clock, their_kid: str, their_key: bytes) -> None:
    ours = ApprovalLinkSigner({"a": KEY_A}, clock=clock)
    theirs = ApprovalLinkSigner({their_kid: their_key}, clock=clock)
    refused(ours, theirs.sign(CHANGE, "approve", EXPIRES))


def test_key_rotation(clock: Clock) -> None:
    old = ApprovalLinkSigner({"k1": KEY_A}, clock=clock)
    old_token = old.sign(CHANGE, "approve", EXPIRES)
    rotated = ApprovalLinkSigner(parse_signing_keys(f"k2:{b64(KEY_B)},k1:{b64(KEY_A)}"), clock=clock)
    assert rotated.current_kid == "k2"
    assert rotated.verify(old_token).kid == "k1"
    new_token = rotated.sign(CHANGE, "reject", EXPIRES)
    assert json.loads(unb64(new_token.split(".")[0]))["k"] == "k2"
    assert rotated.verify(new_token).kid == "k2"
    with pytest.raises(UnauthenticatedError):
        old.verify(new_token)
    retired = ApprovalLinkSigner({"k2": KEY_B}, clock=clock)
    with pytest.raises(UnauthenticatedError):
        retired.verify(old_token)


def test_current_kid_can_be_named(clock: Clock) -> None:
    signer = ApprovalLinkSigner({"k1": KEY_A, "k2": KEY_B}, current_kid="k2", clock=clock)
    assert signer.verify(signer.sign(CHANGE, "approve", EXPIRES)).kid == "k2"
    with pytest.raises(ConfigurationError):
        ApprovalLinkSigner({"k1": KEY_A}, current_kid="k9")


def test_a_single_key_is_accepted(clock: Clock) -> None:
    signer = ApprovalLinkSigner(KEY_A, clock=clock)
    assert signer.verify(signer.sign(CHANGE, "approve", EXPIRES)).kid == "default"


@pytest.mark.parametrize("keys", [{}, {"a": b"short"}, {"a": bytes(31)}, {"bad kid": KEY_A}, b"x" * 31])
def test_signer_refuses_weak_or_bad_keys(keys: bytes | dict[str, bytes]) -> None:
    with pytest.raises(ConfigurationError):
        ApprovalLinkSigner(keys)


# --- expiry and change id ------------------------------------------------------------------------------------


def test_expired_link_is_refused(signer: ApprovalLinkSigner, clock: Clock) -> None:
    token = signer.sign(CHANGE, "approve", EXPIRES)
    clock.now = EXPIRES - timedelta(seconds=1)
    assert signer.verify(token).decision == "approve"
    clock.now = EXPIRES
    expired = refused(signer, token)
    assert expired.detail == "link expired"
    assert [i.path for i in expired.issues] == ["token"]
    clock.now = EXPIRES + timedelta(days=30)
    with pytest.raises(UnauthenticatedError, match="link expired"):
        signer.verify(token)


def test_expiry_is_only_reported_for_a_genuine_token(signer: ApprovalLinkSigner, clock: Clock) -> None:
    forged = forge(good_payload(e=int(NOW.timestamp()) - 10), KEY_B)
    with pytest.raises(UnauthenticatedError) as exc:
        signer.verify(forged)
    assert exc.value.detail != "link expired"


def test_change_id_mismatch_is_refused(signer: ApprovalLinkSigner) -> None:
    token = signer.sign(CHANGE, "approve", EXPIRES)
    assert "another change" in refused(signer, token, change_id="another-change").detail


# --- malformed tokens: always 400 naming ``token``, never 500 ----------------------------------------------

MALFORMED: list[object] = [
    "",
    ".",
    "..",
    "abc",
    "abc.",
    ".abc",
    "a.b.c",
    "!!!.???",
    "abc def.ghi",
    "abc.def\n",
    " " + "a" * 10,
    "é.é",
    "a" * 5000,
    "A.AAAA",  # 1 char: not base64
    b64(b"not json") + "." + b64(bytes(32)),
    b64(b"\xff\xfe") + "." + b64(bytes(32)),
    b64(b"[1,2,3]") + "." + b64(bytes(32)),
    b64(b"null") + "." + b64(bytes(32)),
    b64(b"[" * 700) + "." + b64(bytes(32)),
    b64(json.dumps(good_payload()).encode()) + "." + b64(bytes(16)),  # signature too short
    b64(json.dumps(good_payload()).encode()) + "==." + b64(bytes(32)),  # padding
    b64(json.dumps(good_payload()).encode()) + "." + b64(bytes(32)) + "=",
    b64(json.dumps(good_payload()).encode()).replace("-", "+") + "+/." + b64(bytes(32)),
    None,
    12345,
]

FORGED_SHAPES: list[dict[str, object]] = [
    {k: v for k, v in good_payload().items() if k != "n"},
    {**good_payload(), "x": 1},
    good_payload(c=""),
    good_payload(c=123),
    good_payload(c="x" * 300),
    good_payload(d="maybe"),
    good_payload(d=None),
    good_payload(e="1790000000"),
    good_payload(e=1.5),
    good_payload(e=True),
    good_payload(e=-1),
    good_payload(e=10**30),
    good_payload(k=""),
    good_payload(k="a/b"),
    good_payload(k=7),
    good_payload(n="short"),
    good_payload(n="has space in it"),
    good_payload(n=["n" * 22]),
]


def assert_malformed(exc: pytest.ExceptionInfo[RequestError]) -> None:
    assert type(exc.value) is RequestError
    assert exc.value.status == 400
    assert [i.path for i in exc.value.issues] == ["token"]


@pytest.mark.parametrize("token", MALFORMED)
def test_malformed_tokens_are_400(signer: ApprovalLinkSigner, token: object) -> None:
    with pytest.raises(RequestError) as exc:
        signer.verify(token)  # type: ignore[arg-type]
    assert_malformed(exc)


@pytest.mark.parametrize("payload", FORGED_SHAPES)
def test_wrong_payload_shapes_are_400_even_when_signed(signer: ApprovalLinkSigner, payload: dict[str, object]) -> None:
    with pytest.raises(RequestError) as exc:
        signer.verify(forge(payload))
    assert_malformed(exc)


def test_non_canonical_base64_is_400(signer: ApprovalLinkSigner) -> None:
    payload_part, signature_part = signer.sign(CHANGE, "approve", EXPIRES).split(".")
    # 32 bytes encode to 43 characters; the last one has 2 unused bits. Setting them keeps the bytes, changes the text.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature_part[-1])
    variant = signature_part[:-1] + alphabet[last | 0b01]
    if variant == signature_part:
        variant = signature_part[:-1] + alphabet[last & ~0b11]
    assert unb64(variant) == unb64(signature_part)
    with pytest.raises(RequestError) as exc:
        signer.verify(f"{payload_part}.{variant}")
    assert_malformed(exc)


# --- callback tokens -----------------------------------------------------------------------------------------


def test_callback_tokens_are_one_per_decision_each_with_its_own_nonce(signer: ApprovalLinkSigner) -> None:
    tokens = signer.callback_tokens(CHANGE, EXPIRES, ROUND)
    assert set(tokens) == {"approve", "reject"}
    claims = {decision: signer.verify(token, change_id=CHANGE) for decision, token in tokens.items()}
    assert all(c.decision == d and c.expires_at == EXPIRES for d, c in claims.items())
    assert claims["approve"].nonce != claims["reject"].nonce
    assert all(c.round == ROUND for c in claims.values())


def test_a_token_without_a_round_still_verifies_but_carries_none(signer: ApprovalLinkSigner) -> None:
    assert signer.verify(signer.sign(CHANGE, "approve", EXPIRES)).round is None


# --- signing keys setting -------------------------------------------------------------------------------------


def test_parse_signing_keys() -> None:
    keys = parse_signing_keys(f" k2 : {base64.b64encode(KEY_B).decode()} , k1:{b64(KEY_A)}")
    assert list(keys) == ["k2", "k1"]
    assert keys == {"k2": KEY_B, "k1": KEY_A}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at least one"),
        ("  ,  ", "at least one"),
        (b64(KEY_A), "kid:base64key"),
        (f":{b64(KEY_A)}", "kid:base64key"),
        ("k1:", "kid:base64key"),
        (f"k1:{b64(KEY_A)},", "entry 2"),
        (f"bad kid:{b64(KEY_A)}", "key id"),
        (f"k1:{b64(KEY_A)},k1:{b64(KEY_B)}", "twice"),
        ("k1:not*base64!", "not valid base64"),
        (f"k1:{b64(bytes(31))}", "at least 32 bytes"),
    ],
)
def test_parse_signing_keys_refuses_bad_input(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as exc:
        parse_signing_keys(text)
    assert "WRITEBACK_APPROVAL_SIGNING_KEYS" in str(exc.value)
    secret = text.partition(":")[2].split(",")[0].strip()
    if len(secret) > 8:
        assert secret not in str(exc.value)


# --- single use (fake nonce store; the contract suite runs it against Azurite too) -----------------------------


def test_nonce_store_fake_refuses_a_second_use(signer: ApprovalLinkSigner) -> None:
    store = FakeApprovalNonceStore()
    claims = signer.verify(signer.sign(CHANGE, "approve", EXPIRES))
    store.use(claims.nonce, claims.change_id, claims.expires_at)
    with pytest.raises(AlreadyExistsError):
        store.use(claims.nonce, claims.change_id, claims.expires_at)
    assert len(store) == 1
    assert store.purge_expired(EXPIRES) == 0
    assert store.purge_expired(EXPIRES + timedelta(seconds=1)) == 1
    assert len(store) == 0
