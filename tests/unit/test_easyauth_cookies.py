"""The emulation's sealed cookies: one key per state folder, shared by every instance; a cookie that was changed,
sealed under another key or meant for another purpose does not open (the caller is signed out)."""

from __future__ import annotations

from pathlib import Path

from devhost.easyauth.cookies import (
    NONCE_COOKIE,
    SESSION_COOKIE,
    CookieSealer,
    load_or_create_key,
    request_cookies,
    set_cookie,
)


def test_instances_on_one_state_folder_share_the_key(tmp_path: Path) -> None:
    first, second = load_or_create_key(tmp_path / "easyauth"), load_or_create_key(tmp_path / "easyauth")
    assert first == second and len(first) == 32
    assert (tmp_path / "easyauth" / "session-key").stat().st_mode & 0o077 == 0
    assert load_or_create_key(tmp_path / "other") != first


def test_a_sealed_cookie_opens_only_unchanged_under_its_key_and_name(tmp_path: Path) -> None:
    sealer = CookieSealer(load_or_create_key(tmp_path / "a"))
    value = sealer.seal(SESSION_COOKIE, {"id_token": "t", "exp": 1})
    assert sealer.open(SESSION_COOKIE, value) == {"id_token": "t", "exp": 1}
    assert "id_token" not in value
    flipped = value[:20] + ("A" if value[20] != "A" else "B") + value[21:]
    for broken in (flipped, value[:-4], value + "AA", "", "not base64 !", None):
        assert sealer.open(SESSION_COOKIE, broken) is None, broken
    assert sealer.open(NONCE_COOKIE, value) is None, "a cookie sealed for one purpose is not another"
    assert CookieSealer(load_or_create_key(tmp_path / "b")).open(SESSION_COOKIE, value) is None


def test_cookie_headers() -> None:
    headers = [(b"cookie", b"a=1; AppServiceAuthSession=xyz; a=2"), (b"Cookie", b"Nonce=n")]
    assert request_cookies(headers) == {"a": "1", "AppServiceAuthSession": "xyz", "Nonce": "n"}
    assert set_cookie("S", "v", path="/", same_site="Lax", secure=False) == "S=v; Path=/; HttpOnly; SameSite=Lax"
    assert set_cookie("S", "v", path="/", same_site="None", secure=False).endswith("SameSite=None; Secure")
