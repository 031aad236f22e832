"""The shared authentication module: tokens, scopes, basic users, the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from services.common.auth import (
    Authenticator,
    AuthSettings,
    Principal,
    hash_password,
    scope_covers,
    verify_password,
)

KEY = "k" * 40


def test_issued_token_round_trips_with_scopes_and_role() -> None:
    auth = Authenticator(AuthSettings(secret_key=KEY))
    principal = auth.verify_token(auth.issue_token("alice", "imaging.read x.y", role="researcher"))
    assert principal == Principal("alice", frozenset({"imaging.read", "x.y"}), "researcher")
    assert principal.allows("imaging.read") and not principal.allows("imaging.write")


def test_tokens_signed_with_another_key_or_expired_are_refused() -> None:
    ours = Authenticator(AuthSettings(secret_key=KEY))
    theirs = Authenticator(AuthSettings(secret_key="z" * 40))
    with pytest.raises(jwt.InvalidSignatureError):
        ours.verify_token(theirs.issue_token("mallory", "imaging.*"))
    with pytest.raises(jwt.ExpiredSignatureError):
        ours.verify_token(ours.issue_token("bob", "imaging.read", ttl_seconds=-10))
    forged = jwt.encode(
        {"sub": "eve", "scope": "imaging.*", "iss": "spine-outcomes", "exp": 2_000_000_000},
        None,
        algorithm="none",
    )
    with pytest.raises(jwt.InvalidTokenError):
        ours.verify_token(forged)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Authenticator(AuthSettings(secret_key="short"))


def test_scope_wildcards() -> None:
    assert scope_covers("imaging.*", "imaging.write")
    assert not scope_covers("imaging.*", "outcomes.read")
    assert scope_covers("imaging.read", "imaging.read")
    assert not scope_covers("imaging.read", "imaging.readwrite")


def test_password_hashes() -> None:
    encoded = hash_password("correct horse", rounds=1000)
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong", encoded)
    assert not verify_password("x", "garbage")


def test_key_file_is_created_once_and_private(tmp_path: Path) -> None:
    settings = AuthSettings(key_file=tmp_path / "secrets" / "auth.key")
    first = Authenticator(settings)
    token = first.issue_token("svc", "imaging.read")
    assert oct((tmp_path / "secrets" / "auth.key").stat().st_mode & 0o777) == "0o600"
    assert Authenticator(settings).verify_token(token).subject == "svc"


def test_issue_token_command_prints_a_token_the_service_accepts(tmp_path: Path) -> None:
    env = dict(os.environ, AUTH_SECRET_KEY=KEY)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.common.auth",
            "issue-token",
            "--subject",
            "ops",
            "--scope",
            "imaging.read imaging.write",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    principal = Authenticator(AuthSettings(secret_key=KEY)).verify_token(result.stdout.strip())
    assert principal.subject == "ops" and principal.allows("imaging.write")
    hashed = subprocess.run(
        [sys.executable, "-m", "services.common.auth", "hash-password"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert verify_password("s3cret", hashed.stdout.strip())


def test_tokens_from_an_external_server_are_verified_against_its_jwks() -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    body = json.dumps({"keys": [jwk]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = AuthSettings(
            secret_key=KEY,
            jwks_url=f"http://127.0.0.1:{server.server_port}/",
            jwks_issuer="https://idp.example",
            audience="spine",
        )
        auth = Authenticator(settings)
        claims = {
            "sub": "ehr",
            "scope": "system/Observation.cruds",
            "iss": "https://idp.example",
            "aud": "spine",
            "exp": 4_000_000_000,
        }
        token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"})
        assert auth.verify_token(token).allows("system/Observation.cruds")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"})
        with pytest.raises(jwt.InvalidSignatureError):
            auth.verify_token(forged)
        wrong_audience = jwt.encode(
            claims | {"aud": "other"}, private, algorithm="RS256", headers={"kid": "k1"}
        )
        with pytest.raises(jwt.InvalidAudienceError):
            auth.verify_token(wrong_audience)
        # Our own HS256 tokens keep working beside the JWKS.
        assert auth.verify_token(auth.issue_token("ops", "x")).subject == "ops"
    finally:
        server.shutdown()
