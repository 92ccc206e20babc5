"""Secrets by reference: a password or token named by an environment variable or a file, read where it is used.

Configs carry ``*_env`` / ``*_file`` names rather than values, so a config file, a log line, a
Ray actor's arguments or a JSON dump of the config never holds the secret itself; the process
that opens the connection (a Ray actor, the dashboard, a Serve replica) reads it at that moment.
Errors name the variable or file, never the value.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class SecretError(ValueError):
    """A secret reference cannot be resolved: the variable is unset or the file unreadable or empty."""


#: A secret file larger than this is not a password or token (a misnamed certificate bundle, say).
MAX_SECRET_BYTES = 64 * 1024


def read_secret(*, value: str | None = None, env: str | None = None, file: str | Path | None = None,
                what: str = "secret") -> str | None:
    """The secret given inline, in environment variable ``env`` or in ``file`` (trailing newline
    stripped); None when none of them is set. More than one source is a configuration error."""
    given = [name for name, v in (("inline", value), ("env", env), ("file", file)) if v not in (None, "")]
    if len(given) > 1:
        raise SecretError(f"{what}: give one of an inline value, an environment variable or a file "
                          f"(got {', '.join(given)})")
    if value not in (None, ""):
        return value
    if env:
        secret = os.environ.get(env)
        if not secret:
            raise SecretError(f"{what}: environment variable {env} is not set or empty")
        return secret
    if file:
        path = Path(file).expanduser()
        try:
            if path.stat().st_size > MAX_SECRET_BYTES:
                raise SecretError(f"{what}: {path} is larger than {MAX_SECRET_BYTES} bytes; not a secret file")
            secret = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
        if not secret:
            raise SecretError(f"{what}: {path} is empty")
        return secret
    return None


def write_secret_file(path: Path, secret: str) -> Path:
    """Write ``secret`` to ``path`` readable by its owner only (0600), for tests, the demo and laptops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    path.chmod(0o600)
    return path


def generated_secret_file(path: Path, nbytes: int = 32) -> Path:
    """``path``, holding a random token made on first use (0600): a laptop's, the demo's or the tests' own
    secret. The file appears whole or not at all, and one another process made first is kept."""
    path = Path(path).expanduser()
    if path.exists():
        return path
    staged = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    write_secret_file(staged, secrets.token_urlsafe(nbytes))
    try:
        os.link(staged, path)  # atomic, and fails if the file exists by now
    except FileExistsError:
        pass
    finally:
        staged.unlink(missing_ok=True)
    return path
