"""Tokens (issue 11, item 14): per-audience keys, issuer, user names, lifetimes, rotation, list and revoke."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import httpx
import jwt
import pytest

from orchestrator.auth import (
    AGENT_AUDIENCE,
    ISSUER,
    MAX_USER_TOKEN_TTL,
    USER_AUDIENCE,
    USER_TOKEN_TTL,
    SigningSecrets,
    TokenError,
    bearer_token,
    decode_agent_token,
    decode_user_token,
    issue_user_token,
    mint_agent_token,
    mint_user_token,
    signing_key,
)
from orchestrator.cli import build_parser
from orchestrator.settings import SettingsError, default_data_dir, load_settings
from orchestrator.tokens import REVOKED_REFRESH_S
from tests.live import JWT_SECRET, ORCH, REPO, start_service

OLD_SECRET = JWT_SECRET
NEW_SECRET = "rotated-secret-" + "z" * 32
BAD_USER_NAMES = ["Bob", "bob\n", "bob ", " bob", "-bob", "_bob", "", "a" * 40, "bob\x00", "böb", "bob.x", "bob/x"]


def _claims(**overrides) -> dict:
    now = dt.datetime.now(dt.UTC)
    claims = {"iss": ISSUER, "sub": "carol", "role": "user", "aud": USER_AUDIENCE, "jti": "j1",
              "iat": now, "exp": now + dt.timedelta(hours=1)}
    claims.update(overrides)
    return claims


def test_an_agent_token_with_a_forged_audience_is_not_a_user_token():
    # Signed with the agent key (what an agent holds) but claiming the user audience and a role.
    forged = jwt.encode(_claims(aud=USER_AUDIENCE), signing_key(JWT_SECRET, AGENT_AUDIENCE), "HS256")
    with pytest.raises(TokenError, match="bad signature"):
        decode_user_token(JWT_SECRET, forged)
    # And the other way round: a user key never signs an agent token.
    forged_agent = jwt.encode(_claims(aud=AGENT_AUDIENCE), signing_key(JWT_SECRET, USER_AUDIENCE), "HS256")
    with pytest.raises(TokenError, match="bad signature"):
        decode_agent_token(JWT_SECRET, forged_agent)
    # A token signed with the configured secret itself (how tokens were signed before) is refused.
    with pytest.raises(TokenError, match="bad signature"):
        decode_user_token(JWT_SECRET, jwt.encode(_claims(), JWT_SECRET, "HS256"))
    assert signing_key(JWT_SECRET, USER_AUDIENCE) != signing_key(JWT_SECRET, AGENT_AUDIENCE)
    # Each audience's own tokens still decode, and an unforged agent token names its audience.
    agent_token, _ = mint_agent_token(JWT_SECRET, "box")
    assert decode_agent_token(JWT_SECRET, agent_token)["sub"] == "box"
    with pytest.raises(TokenError, match="wrong audience: expected 'orch-api', token is for 'agent'"):
        decode_user_token(JWT_SECRET, agent_token)


def test_the_issuer_is_set_and_checked():
    token = mint_user_token(JWT_SECRET, "carol")
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == ISSUER
    agent_token, _ = mint_agent_token(JWT_SECRET, "box")
    assert jwt.decode(agent_token, options={"verify_signature": False})["iss"] == ISSUER
    key = signing_key(JWT_SECRET, USER_AUDIENCE)
    with pytest.raises(TokenError, match="wrong issuer: expected 'orch', token is from 'someone-else'"):
        decode_user_token(JWT_SECRET, jwt.encode(_claims(iss="someone-else"), key, "HS256"))
    without_issuer = _claims()
    del without_issuer["iss"]
    with pytest.raises(TokenError, match="lacks the 'iss' claim"):
        decode_user_token(JWT_SECRET, jwt.encode(without_issuer, key, "HS256"))
    agent_key = signing_key(JWT_SECRET, AGENT_AUDIENCE)
    with pytest.raises(TokenError, match="wrong issuer"):
        decode_agent_token(JWT_SECRET, jwt.encode(_claims(aud=AGENT_AUDIENCE, iss="x"), agent_key, "HS256"))


def test_user_tokens_carry_a_jti_and_live_12_hours_by_default():
    issued = issue_user_token(JWT_SECRET, "carol")
    principal = decode_user_token(JWT_SECRET, issued.token)
    assert principal.token_id == issued.jti and len(issued.jti) == 32
    assert issued.expires_at - issued.issued_at == USER_TOKEN_TTL == dt.timedelta(hours=12)
    assert issue_user_token(JWT_SECRET, "carol").jti != issued.jti
    without_jti = _claims()
    del without_jti["jti"]
    with pytest.raises(TokenError, match="lacks the 'jti' claim"):
        decode_user_token(JWT_SECRET, jwt.encode(without_jti, signing_key(JWT_SECRET, USER_AUDIENCE), "HS256"))
    for ttl in (dt.timedelta(seconds=10), MAX_USER_TOKEN_TTL + dt.timedelta(seconds=1), -dt.timedelta(hours=1)):
        with pytest.raises(ValueError, match="out of range"):
            issue_user_token(JWT_SECRET, "carol", ttl=ttl)
    assert issue_user_token(JWT_SECRET, "carol", ttl=MAX_USER_TOKEN_TTL).expires_at


def test_cli_ttl_is_parsed_and_bounded_in_its_format():
    parse = build_parser().parse_args
    assert parse(["token", "create", "--user", "a", "--ttl", "90m"]).ttl == dt.timedelta(minutes=90)
    assert parse(["token", "create", "--user", "a", "--ttl", "7d"]).ttl == dt.timedelta(days=7)
    for bad in ("12", "1w", "-1h", "1.5h", "12h\n", "9999999h"):
        with pytest.raises(SystemExit):
            parse(["token", "create", "--user", "a", "--ttl", bad])


@pytest.mark.parametrize("name", BAD_USER_NAMES)
def test_bad_user_names_are_refused_when_minting_and_decoding(name):
    with pytest.raises(ValueError, match="user name .* is invalid"):
        mint_user_token(JWT_SECRET, name)
    signed = jwt.encode(_claims(sub=name), signing_key(JWT_SECRET, USER_AUDIENCE), "HS256")
    with pytest.raises(TokenError, match="is invalid"):
        decode_user_token(JWT_SECRET, signed)


def test_good_user_names_pass():
    for name in ("a", "bob", "0day", "a-b_c", "a" * 39):
        assert decode_user_token(JWT_SECRET, mint_user_token(JWT_SECRET, name)).name == name


def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key():
    old_user = mint_user_token(OLD_SECRET, "carol")
    old_agent, _ = mint_agent_token(OLD_SECRET, "box")
    ring = SigningSecrets(NEW_SECRET, (OLD_SECRET,))
    assert decode_user_token(ring, old_user).name == "carol"
    assert decode_agent_token(ring, old_agent)["sub"] == "box"
    new_user = mint_user_token(ring, "carol")
    new_agent, _ = mint_agent_token(ring, "box")
    assert decode_user_token(NEW_SECRET, new_user).name == "carol"
    assert decode_agent_token(NEW_SECRET, new_agent)["sub"] == "box"
    with pytest.raises(TokenError, match="bad signature"):
        decode_user_token(OLD_SECRET, new_user)
    # Once the previous secret is dropped, its tokens are refused.
    with pytest.raises(TokenError, match="bad signature"):
        decode_user_token(NEW_SECRET, old_user)
    # An expired token signed with a previous key says expired, not bad signature.
    expired = jwt.encode(_claims(exp=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)),
                         signing_key(OLD_SECRET, USER_AUDIENCE), "HS256")
    with pytest.raises(TokenError, match="expired"):
        decode_user_token(ring, expired)


def test_previous_secrets_setting(tmp_path):
    base = {"ORCH_DATA_DIR": str(tmp_path), "ORCH_JWT_SECRET": NEW_SECRET}
    settings = load_settings({**base, "ORCH_JWT_PREVIOUS_SECRETS": f"{OLD_SECRET}, {'p' * 40}"})
    assert settings.jwt_secret == SigningSecrets(NEW_SECRET, (OLD_SECRET, "p" * 40))
    assert NEW_SECRET not in repr(settings) and OLD_SECRET not in repr(settings)
    assert load_settings(base).jwt_secret.previous == ()
    with pytest.raises(SettingsError, match=r"ORCH_JWT_PREVIOUS_SECRETS \(secret 2\) is 5 bytes"):
        load_settings({**base, "ORCH_JWT_PREVIOUS_SECRETS": f"{OLD_SECRET},short"})
    with pytest.raises(SettingsError, match="ORCH_JWT_PREVIOUS_SECRETS holds 5 secrets; at most 4"):
        load_settings({**base, "ORCH_JWT_PREVIOUS_SECRETS": ",".join(["q" * 40] * 5)})


def test_a_huge_authorization_header_is_refused_before_parsing():
    with pytest.raises(TokenError, match="a token is at most 4096"):
        bearer_token("Bearer " + "a" * 10_000_000)


# -- through the CLI and the API -------------------------------------------


@pytest.fixture(scope="module")
def rotated_service(tmp_path_factory, mongo_url):
    """A service whose secret was rotated: OLD_SECRET (what tests.live mints with) is the previous one."""
    live = start_service(
        tmp_path_factory.mktemp("tokens"), mongo_url, ORCH_JWT_SECRET=NEW_SECRET, ORCH_JWT_PREVIOUS_SECRETS=OLD_SECRET
    )
    yield live
    live.stop()


def _orch(live, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ORCH, *args], env=live.env, capture_output=True, text=True, timeout=60, cwd=REPO)


def _status(live, token: str) -> httpx.Response:
    return httpx.get(f"{live.url}/api/v1/instances", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_rotated_service_accepts_old_tokens_and_mints_with_the_new_key(rotated_service):
    live = rotated_service
    assert _status(live, mint_user_token(OLD_SECRET, "carol")).status_code == 200
    created = _orch(live, "token", "create", "--user", "carol")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert decode_user_token(NEW_SECRET, token).name == "carol"
    with pytest.raises(TokenError, match="bad signature"):
        decode_user_token(OLD_SECRET, token)
    assert _status(live, token).status_code == 200
    forged = mint_user_token("not-the-service-secret-" + "y" * 32, "carol")
    response = _status(live, forged)
    assert response.status_code == 401 and "bad signature" in response.json()["detail"]


def test_token_create_list_revoke(rotated_service):
    live = rotated_service
    created = _orch(live, "token", "create", "--user", "erin", "--ttl", "2h")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    jti = decode_user_token(NEW_SECRET, token).token_id
    assert jti in created.stderr
    admin = _orch(live, "token", "create", "--user", "root", "--admin")
    assert admin.returncode == 0, admin.stderr
    admin_jti = decode_user_token(NEW_SECRET, admin.stdout.strip().splitlines()[-1]).token_id

    listing = _orch(live, "token", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows[jti][1:3] == ["erin", "user"] and rows[jti][-1] == "-"
    assert rows[admin_jti][1:3] == ["root", "admin"]
    issued, expires = (dt.datetime.fromisoformat(v) for v in rows[jti][3:5])
    assert expires - issued == dt.timedelta(hours=2)

    # A token minted directly (no record) works until revoked; one minted by the CLI too.
    unrecorded = mint_user_token(NEW_SECRET, "erin")
    assert _status(live, token).status_code == 200
    assert _status(live, unrecorded).status_code == 200

    revoked = _orch(live, "token", "revoke", jti)
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + REVOKED_REFRESH_S + 10
    while (response := _status(live, token)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.status_code == 401 and "token revoked" in response.json()["detail"]
    # Revocation is by jti: erin's other token and the admin's are untouched.
    assert _status(live, unrecorded).status_code == 200
    assert _status(live, admin.stdout.strip().splitlines()[-1]).status_code == 200
    listing = _orch(live, "token", "list")
    row = next(line.split() for line in listing.stdout.splitlines() if line.startswith(jti))
    assert row[-1] != "-"

    unknown = _orch(live, "token", "revoke", "no-such-jti")
    assert unknown.returncode == 2 and "no recorded user token has jti 'no-such-jti'" in unknown.stderr


def test_cli_refuses_bad_user_names_and_lifetimes(rotated_service):
    live = rotated_service
    for name in ("Bob", "bob\n", "a" * 40, "-x"):
        result = _orch(live, "token", "create", f"--user={name}")
        assert result.returncode == 2 and result.stdout == ""
        assert "is invalid: 1-39 characters" in result.stderr
    result = _orch(live, "token", "create", "--user", "bob", "--ttl", "31d")
    assert result.returncode == 2 and "out of range" in result.stderr
    result = _orch(live, "token", "create", "--instance", "box", "--ttl", "1h")
    assert result.returncode == 2 and "--ttl is for user tokens" in result.stderr


def test_the_default_data_dir_is_the_checkouts_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_data_dir({}) == REPO / ".orch"


def test_token_create_never_makes_a_data_dir_or_secrets(tmp_path):
    """Run anywhere, `orch token create` uses the service's data dir and refuses where there is none."""
    missing = tmp_path / "no-service-here"
    empty = tmp_path / "empty"
    empty.mkdir()
    for data_dir, message in (
        (missing, f"orch token create: no service data dir at {missing}: start the service first or set ORCH_DATA_DIR"),
        (empty, f"orch token create: {empty} has no jwt-secret: the service has not made one there "
                "(start it with this ORCH_DATA_DIR, or give the same ORCH_JWT_SECRET it was given)"),
    ):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ORCH_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
        created = subprocess.run([sys.executable, "-m", "orchestrator.cli", "token", "create", "--user", "dan"],
                                 env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
        assert (created.returncode, created.stdout, created.stderr.strip()) == (2, "", message)
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["empty"]
