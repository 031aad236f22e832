"""Authentication shared by every service: signed bearer tokens (JWT, HS256) and,
where configured, HTTP basic users. There is no switch that turns it off.

Scopes are space-separated strings in the token's ``scope`` claim. Imaging uses
``imaging.read``, ``imaging.write`` and ``imaging.admin``; a granted scope ending in
``*`` covers every scope with that prefix (``imaging.*``).

Key resolution (one place, used by the services and by ``issue-token``):
``AUTH_SECRET_KEY`` if set, otherwise the key file ``AUTH_KEY_FILE`` (default
``var/secrets/auth.key``), created with 256 random bits and mode 0600 on first use.

Command line::

    python -m services.common.auth issue-token --subject NAME --scope "imaging.read"
    python -m services.common.auth hash-password
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import secrets
import sys
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import httpx
import jwt
from fastapi import Depends, HTTPException, Request, status
from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ALGORITHM = "HS256"
JWKS_ALGORITHMS = ("RS256", "ES256")
PBKDF2_ROUNDS = 200_000


class BasicUser(BaseModel):
    """An HTTP basic user: a PBKDF2 hash (``pbkdf2_sha256$rounds$salt$hash``) and scopes."""

    password_hash: str
    scope: str = ""
    role: str | None = None


class AuthSettings(BaseSettings):
    """Shared authentication settings (prefix ``AUTH_``)."""

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    secret_key: SecretStr | None = None
    key_file: Path = Path("var/secrets/auth.key")
    issuer: str = "spine-outcomes"
    token_ttl_seconds: int = 12 * 3600
    methods: list[Literal["bearer", "basic"]] = ["bearer", "basic"]
    basic_users: dict[str, BasicUser] = {}
    # Tokens of an external authorization server (RS256/ES256), verified against its JWKS.
    jwks_url: str | None = None
    jwks_issuer: str | None = None
    audience: str | None = None


def secret_key(configured: SecretStr | None, key_file: Path, *, name: str) -> bytes:
    """A secret: configured (at least 32 bytes), or read from (and first created in) a file.

    The file gets 256 random bits and mode 0600; it lives outside the repository.
    """
    if configured is not None:
        key = configured.get_secret_value().encode()
        if len(key) < 32:
            raise ValueError(f"{name} must be at least 32 bytes")
        return key
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return key_file.read_text().strip().encode()


def resolve_key(settings: AuthSettings) -> bytes:
    """The signing key: ``AUTH_SECRET_KEY``, or the key file."""
    return secret_key(settings.secret_key, settings.key_file, name="AUTH_SECRET_KEY")


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    role: str | None = None
    patient: str | None = None  # SMART launch context: the Patient id patient/ scopes are for

    def allows(self, required: str) -> bool:
        return any(scope_covers(granted, required) for granted in self.scopes)


def scope_covers(granted: str, required: str) -> bool:
    """Whether a granted scope covers the required one (exact, or ``prefix*``)."""
    if granted.endswith("*"):
        return required.startswith(granted[:-1])
    return granted == required


def hash_password(password: str, *, rounds: int = PBKDF2_ROUNDS) -> str:
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), rounds)
    return f"pbkdf2_sha256${rounds}${salt}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, rounds, salt, expected = encoded.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(rounds))
    return hmac.compare_digest(digest.hex(), expected)


class Authenticator:
    """Issues and verifies credentials for one configured key."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._key = resolve_key(settings)
        self._jwks = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=10)
            if settings.jwks_url
            else None
        )

    def issue_token(
        self,
        subject: str,
        scope: str,
        *,
        role: str | None = None,
        ttl_seconds: int | None = None,
        patient: str | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "sub": subject,
            "scope": scope,
            "iss": self.settings.issuer,
            "iat": now,
            "exp": now + (ttl_seconds or self.settings.token_ttl_seconds),
            "jti": secrets.token_hex(8),
        }
        if role:
            claims["role"] = role
        if patient:
            claims["patient"] = patient
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify_token(self, token: str) -> Principal:
        """Verify a token: HS256 with our key, or RS256/ES256 against the JWKS.

        The algorithm decides the key, never the other way round, so a token cannot
        make us verify an HMAC with a public key.
        """
        algorithm = jwt.get_unverified_header(token).get("alg")
        if algorithm in JWKS_ALGORITHMS and self._jwks is not None:
            try:
                signing_key = self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as exc:
                raise jwt.InvalidTokenError(f"no JWKS key for the token: {exc}") from None
            claims = jwt.decode(
                token,
                signing_key,
                algorithms=list(JWKS_ALGORITHMS),
                issuer=self.settings.jwks_issuer or self.settings.issuer,
                audience=self.settings.audience,
                options={
                    "require": ["sub", "exp", "iss"],
                    "verify_aud": bool(self.settings.audience),
                },
            )
        else:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self.settings.issuer,
                options={"require": ["sub", "exp", "iss"]},
            )
        return Principal(
            subject=str(claims["sub"]),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            role=claims.get("role"),
            patient=str(claims["patient"]) if claims.get("patient") else None,
        )

    def verify_basic(self, username: str, password: str) -> Principal | None:
        user = self.settings.basic_users.get(username)
        if user is None or not verify_password(password, user.password_hash):
            return None
        return Principal(subject=username, scopes=frozenset(user.scope.split()), role=user.role)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header, or :class:`HTTPException` 401."""
        if not authorization:
            raise _unauthorized("authentication required")
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and "bearer" in self.settings.methods:
            try:
                return self.verify_token(credentials.strip())
            except jwt.ExpiredSignatureError:
                raise _unauthorized("token expired") from None
            except jwt.InvalidTokenError:
                raise _unauthorized("invalid token") from None
        if scheme == "basic" and "basic" in self.settings.methods:
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise _unauthorized("malformed basic credentials") from None
            username, _, password = decoded.partition(":")
            principal = self.verify_basic(username, password)
            if principal is None:
                raise _unauthorized("invalid username or password")
            return principal
        raise _unauthorized("unsupported authentication scheme")


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=reason,
        headers={"WWW-Authenticate": 'Bearer realm="spine-outcomes", Basic realm="spine-outcomes"'},
    )


def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller (the app keeps its Authenticator in state)."""
    authenticator: Authenticator = request.app.state.authenticator
    authorization = request.headers.get("authorization")
    # Browser pages (the gateway's dashboard) carry the same token in a session cookie.
    cookie_name: str | None = getattr(request.app.state, "session_cookie", None)
    if authorization is None and cookie_name and request.cookies.get(cookie_name):
        authorization = f"Bearer {request.cookies[cookie_name]}"
    principal = authenticator.authenticate(authorization)
    request.state.principal = principal
    return principal


def require_scope(scope: str) -> object:
    """FastAPI dependency factory: the caller must hold ``scope``, else 403."""

    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.allows(scope):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN, detail=f"scope '{scope}' required"
            )
        return principal

    return Depends(dependency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.auth")
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser("issue-token", help="print a signed bearer token")
    issue.add_argument("--subject", required=True)
    issue.add_argument("--scope", required=True, help='space-separated, e.g. "imaging.read"')
    issue.add_argument("--role", default=None)
    issue.add_argument("--patient", default=None, help="SMART launch context (a Patient id)")
    issue.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    sub.add_parser("hash-password", help="hash a password for AUTH_BASIC_USERS")
    args = parser.parse_args(argv)
    if args.command == "issue-token":
        token = Authenticator(AuthSettings()).issue_token(
            args.subject, args.scope, role=args.role, ttl_seconds=args.ttl, patient=args.patient
        )
        print(token)
        return 0
    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
    print(hash_password(password.rstrip("\n")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class ServiceBearer(httpx.Auth):
    """How one of our services calls another: the configured token, or else a short-lived
    integration token signed with the shared key and renewed before it expires."""

    def __init__(
        self,
        authenticator: Authenticator,
        subject: str,
        scope: str,
        configured: SecretStr | None = None,
        ttl_seconds: int = 3600,
    ) -> None:
        self._authenticator, self._subject, self._scope = authenticator, subject, scope
        self._ttl = ttl_seconds
        self._token = configured.get_secret_value() if configured is not None else ""
        self._expires = float("inf") if configured is not None else 0.0
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            if time.monotonic() > self._expires - 60:
                self._token = self._authenticator.issue_token(
                    self._subject, self._scope, role="integration", ttl_seconds=self._ttl
                )
                self._expires = time.monotonic() + self._ttl
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
