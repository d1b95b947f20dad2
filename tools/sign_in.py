"""Tokens and sessions from the local OpenID provider without a browser, for curl and for tests.

    python -m tools.sign_in --client crm                          # an app-only access token (client credentials)
    python -m tools.sign_in --client crm --user riley@writeback.example   # crm acting for Riley (delegated, scp)

Reads the provider's issuer, the site's client id and the client secrets from ``.local/endpoints.json`` (``openId``,
written by ``make services`` / ``make run``; ``WRITEBACK_DEV_STATE_DIR`` moves ``.local``) and prints the access
token, for ``curl -H "Authorization: Bearer $(python -m tools.sign_in --client crm)" ...`` against a gateway run
with ``EASYAUTH=1``. A person is chosen by oid or user name, as on the provider's sign-in form.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from devhost.endpoints import read_endpoints


def discovery(issuer: str) -> dict[str, Any]:
    resp = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
    resp.raise_for_status()
    document: dict[str, Any] = resp.json()
    return document


def app_token(issuer: str, client_id: str, secret: str, resource: str) -> str:
    """An app-only access token for ``resource`` (a client id or application id URI): client credentials."""
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    resp = httpx.post(discovery(issuer)["token_endpoint"], data={**form, "scope": f"{resource}/.default"}, timeout=10)
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def choose_on_form(authorize_url: str, login: str, http: httpx.Client) -> str:
    """Post the provider's sign-in form for the person ``login`` (their oid); the Location it redirects to."""
    params = dict(parse_qsl(urlsplit(authorize_url).query))
    resp = http.post(authorize_url.split("?", 1)[0], data={**params, "login": login}, timeout=10)
    if resp.status_code != 302:
        raise RuntimeError(f"the provider answered {resp.status_code}: {resp.text[:300]}")
    return resp.headers["location"]


def user_token(
    issuer: str, client_id: str, secret: str | None, login: str, scope: str, redirect_uri: str
) -> dict[str, Any]:
    """The token response for ``client_id`` acting for the person ``login``: the authorization code flow with PKCE,
    the person chosen on the provider's form."""
    meta = discovery(issuer)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code", "scope": scope}
    params |= {"state": secrets.token_urlsafe(8), "code_challenge": challenge, "code_challenge_method": "S256"}
    with httpx.Client(timeout=10) as http:
        authorize = str(http.get(meta["authorization_endpoint"], params=params).url)
        code = dict(parse_qsl(urlsplit(choose_on_form(authorize, login, http)).query))["code"]
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        form |= {"client_id": client_id, "code_verifier": verifier}
        if secret is not None:
            form["client_secret"] = secret
        resp = http.post(meta["token_endpoint"], data=form)
    resp.raise_for_status()
    answer: dict[str, Any] = resp.json()
    return answer


def site_session(site: str, login: str, http: httpx.Client, post_login_redirect_uri: str = "/review") -> str:
    """Sign ``http`` in to the site through ``/.auth/login/aad`` as the person ``login``; where the site then sends
    the browser (``post_login_redirect_uri`` when it is allowed). The session cookie stays in ``http``."""
    start = http.get(f"{site}/.auth/login/aad", params={"post_login_redirect_uri": post_login_redirect_uri})
    if start.status_code != 302:
        raise RuntimeError(f"/.auth/login/aad answered {start.status_code}: {start.text[:300]}")
    callback = http.get(choose_on_form(start.headers["location"], login, http))
    if callback.status_code != 302:
        raise RuntimeError(f"the sign-in callback answered {callback.status_code}: {callback.text[:300]}")
    return callback.headers["location"]


def _person(directory: Path, who: str) -> str:
    import yaml

    users = yaml.safe_load(directory.read_text()).get("users", [])
    for user in users:
        if who in (user["oid"], user["username"]):
            return str(user["oid"])
    raise SystemExit(f"no person {who!r} in {directory}")


def main(argv: list[str] | None = None) -> int:
    from tools.openid_provider.directory import DEFAULT_DIRECTORY

    parser = argparse.ArgumentParser(prog="python -m tools.sign_in", description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", required=True, help="the calling app's client id (config/demo-users.yaml)")
    parser.add_argument("--user", help="act for this person (oid or user name): a delegated token")
    state = Path(os.environ.get("WRITEBACK_DEV_STATE_DIR", Path(__file__).resolve().parents[1] / ".local"))
    parser.add_argument("--endpoints", type=Path, default=state / "endpoints.json")
    parser.add_argument("--directory", type=Path, default=DEFAULT_DIRECTORY)
    args = parser.parse_args(argv)
    openid = read_endpoints(args.endpoints).get("openId")
    if not openid:
        raise SystemExit(f"{args.endpoints} names no OpenID provider: start the local services (make services)")
    secret = json.loads(Path(openid["clientSecretsFile"]).read_text()).get(args.client)
    site = openid["clientId"]
    if args.user is None:
        if secret is None:
            raise SystemExit(f"{args.client} has no secret: a public client cannot use client credentials")
        print(app_token(openid["issuer"], args.client, secret, f"api://{site}"))
        return 0
    redirect = f"http://127.0.0.1/{args.client}/callback"
    scope = f"api://{site}/user_impersonation"
    answer = user_token(openid["issuer"], args.client, secret, _person(args.directory, args.user), scope, redirect)
    print(answer["access_token"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
