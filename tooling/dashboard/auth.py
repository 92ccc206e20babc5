"""Who may use the dashboard: viewer and operator credentials, login sessions, CSRF tokens.

Credentials come from the environment or files, never from the command line or the pipeline
config: a token per role (``JUDO_DASHBOARD_OPERATOR_TOKEN`` / ``JUDO_DASHBOARD_VIEWER_TOKEN`` or
``--operator-token-file`` / ``--viewer-token-file``) and/or a users file of ``name role password``
lines (mode 0600). With none configured, an operator token is generated and written to a 0600
file whose path is printed, so the dashboard is never open by default. A login gives a random
session id in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` under TLS) and a CSRF token the
page sends back with feedback. API clients may send ``Authorization: Bearer <token>`` instead.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

from cluster.secrets import SecretError, read_secret, write_secret_file

ROLES = ("viewer", "operator")
OPERATOR_TOKEN_ENV = "JUDO_DASHBOARD_OPERATOR_TOKEN"
VIEWER_TOKEN_ENV = "JUDO_DASHBOARD_VIEWER_TOKEN"
#: Failed logins from one address within the window before it is told to wait (429).
MAX_FAILURES, FAILURE_WINDOW_S = 10, 300.0


class AuthConfigError(ValueError):
    """The dashboard's credentials are missing or malformed; the message names the source, not the secret."""


@dataclass(frozen=True)
class Session:
    """One logged-in browser (or a bearer-token API client, ``sid`` empty)."""

    sid: str
    user: str
    role: str
    csrf: str
    expires: float = field(default=0.0, compare=False)

    @property
    def may_send_feedback(self) -> bool:
        return self.role == "operator"


class DashboardAuth:
    """Credentials and the live sessions of one dashboard."""

    def __init__(self, tokens: dict[str, str] | None = None, users: dict[str, tuple[str, str]] | None = None, *,
                 session_ttl_s: float = 12 * 3600, secure_cookies: bool = False,
                 generated_token_file: Path | None = None):
        self.tokens = {role: token for role, token in (tokens or {}).items() if token}
        self.users = dict(users or {})
        for role in [*self.tokens, *(r for r, _ in self.users.values())]:
            if role not in ROLES:
                raise AuthConfigError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if not self.tokens and not self.users:
            raise AuthConfigError("the dashboard needs at least one credential")
        self.session_ttl_s = session_ttl_s
        self.secure_cookies = secure_cookies
        #: where a generated operator token was written (None: credentials were configured)
        self.generated_token_file = generated_token_file
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_sources(cls, *, operator_token_file: Path | None = None, viewer_token_file: Path | None = None,
                     users_file: Path | None = None, generated_token_file: Path | None = None,
                     secure_cookies: bool = False, environ: dict | None = None) -> "DashboardAuth":
        """Credentials from the environment and files; none at all: a generated operator token,
        written to ``generated_token_file`` (0600)."""
        env = os.environ if environ is None else environ
        tokens = {}
        try:
            for role, variable, file in (("operator", OPERATOR_TOKEN_ENV, operator_token_file),
                                         ("viewer", VIEWER_TOKEN_ENV, viewer_token_file)):
                if file is not None:
                    tokens[role] = read_secret(file=file, what=f"{role} token")
                elif env.get(variable):
                    tokens[role] = env[variable]
        except SecretError as exc:
            raise AuthConfigError(str(exc)) from None
        if len(set(tokens.values())) < len(tokens):
            raise AuthConfigError("the operator and viewer tokens must differ")
        users = read_users_file(users_file) if users_file is not None else {}
        if tokens or users:
            return cls(tokens, users, secure_cookies=secure_cookies)
        if generated_token_file is None:
            raise AuthConfigError("no dashboard credentials configured and nowhere to write a generated token")
        token = secrets.token_urlsafe(24)
        write_secret_file(generated_token_file, token)
        return cls({"operator": token}, secure_cookies=secure_cookies, generated_token_file=generated_token_file)

    # ------------------------------------------------------------------ checks
    def check_token(self, token: str) -> str | None:
        """The role ``token`` grants, or None. Constant-time against every configured token."""
        found = None
        for role, expected in self.tokens.items():
            if hmac.compare_digest(token.encode("utf-8", "replace"), expected.encode()):
                found = role
        return found

    def check_password(self, user: str, password: str) -> str | None:
        role, expected = self.users.get(user, ("", secrets.token_hex(16)))
        ok = hmac.compare_digest(password.encode("utf-8", "replace"), expected.encode())
        return role if ok and role else None

    def throttled(self, client: str) -> bool:
        """Whether ``client`` failed to log in too often lately."""
        with self._lock:
            recent = self._failures.get(client)
            now = time.monotonic()
            while recent and now - recent[0] > FAILURE_WINDOW_S:
                recent.popleft()
            return bool(recent) and len(recent) >= MAX_FAILURES

    def login(self, form: dict[str, str], client: str) -> Session | None:
        """A new session for a right token, or user and password; None (and a failure counted) otherwise."""
        token, user, password = form.get("token", ""), form.get("user", ""), form.get("password", "")
        role, name = None, ""
        if token:
            role, name = self.check_token(token), "token"
        elif user and password:
            role, name = self.check_password(user, password), user
        if role is None:
            with self._lock:
                self._failures.setdefault(client, deque()).append(time.monotonic())
            return None
        session = Session(secrets.token_urlsafe(32), name if name != "token" else f"{role} (token)", role,
                          secrets.token_urlsafe(32), time.time() + self.session_ttl_s)
        with self._lock:
            self._sessions[session.sid] = session
            self._failures.pop(client, None)
        return session

    def logout(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.sid, None)

    def session_of(self, headers) -> Session | None:
        """The session of a request: its cookie, or a bearer token (role of that token, no CSRF needed)."""
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            role = self.check_token(authorization[len("Bearer "):])
            return Session("", f"{role} (bearer)", role, "") if role else None
        sid = cookie_value(headers.get("Cookie", ""), self.cookie_name)
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.time():
                del self._sessions[sid]
                session = None
        return session

    def csrf_ok(self, session: Session, presented: str) -> bool:
        """Bearer clients carry no cookie a foreign page could ride on; browser sessions must echo their token."""
        if not session.sid:
            return True
        return bool(presented) and hmac.compare_digest(presented.encode("utf-8", "replace"), session.csrf.encode())

    # ------------------------------------------------------------------ cookies
    @property
    def cookie_name(self) -> str:
        return "__Host-judo_session" if self.secure_cookies else "judo_session"

    def cookie(self, session: Session | None) -> str:
        """The ``Set-Cookie`` value for ``session`` (None: clear it)."""
        value, age = (session.sid, int(self.session_ttl_s)) if session else ("", 0)
        attributes = f"{self.cookie_name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}"
        return attributes + ("; Secure" if self.secure_cookies else "")


def cookie_value(header: str, name: str) -> str | None:
    try:
        jar = SimpleCookie()
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def read_users_file(path: Path) -> dict[str, tuple[str, str]]:
    """``name role password`` per line (``#`` comments); the file must not be readable by others."""
    try:
        if path.stat().st_mode & 0o077:
            raise AuthConfigError(f"{path} is readable by group or others; chmod 600 it")
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AuthConfigError(f"cannot read users file {path}: {exc.strerror or exc}") from None
    users = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) != 3 or parts[1] not in ROLES:
            raise AuthConfigError(f"{path}:{number}: expected 'name role password' with role viewer or operator")
        users[parts[0]] = (parts[1], parts[2].strip())
    if not users:
        raise AuthConfigError(f"{path} names no users")
    return users
