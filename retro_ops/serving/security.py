"""Who may swap, where a server may listen, and what the catalog may know about a token.

The catalog (often a shared Postgres) records which token made each swap. An unsalted 12-hex
prefix of sha256(token) there lets anyone who reads it test guesses offline; a keyed hash (HMAC
with a random key that stays in the server's home, mode 0600) names the same token the same way
on every start without that.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from retro_ops.errors import AdminTokenError

MIN_TOKEN_CHARS = 16
KEY_FILE = "token_id.key"


def check_admin_token(token: str | None, source: str) -> str | None:
    """The token (stripped), None when absent; too short is an error naming where it came from."""
    token = (token or "").strip() or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise AdminTokenError(f"{source}: an admin token needs at least {MIN_TOKEN_CHARS} "
                              f"characters (got {len(token)})")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve anywhere


def check_bind(host: str, token: str | None) -> None:
    """Anything but loopback needs an admin token: an open admin-less server on a network
    interface is almost always a mistake."""
    if not is_loopback(host) and not token:
        raise AdminTokenError(f"refusing to bind {host!r} without an admin token: set "
                              "$RETRO_OPS_ADMIN_TOKEN or --token-file, or bind 127.0.0.1")


def token_key(home: Path) -> bytes:
    """The home's HMAC key for token ids: made once, 0600, published whole with a hard link so
    that two servers starting together agree on it."""
    path = Path(home) / "secrets" / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # fails if another server published first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) < 32:
        raise AdminTokenError(f"{path}: token-id key is {len(key)} bytes, expected 32; delete "
                              "it to make a new one")
    return key


def token_id(token: str | None, key: bytes) -> str | None:
    """A keyed, non-reversible name for a token: 32 hex of HMAC-SHA256(key, token)."""
    if not token:
        return None
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]
