"""Key generation, hashing, and the in-memory key set the API checks requests against."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth.models import ApiKey
from app.db import translate_db_errors
from app.errors import Conflict, DatabaseUnavailable, InvalidInput, NotFound

log = logging.getLogger("jobq.auth")
SCOPES = ("read", "submit")
KEY_PREFIX = "jq_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and scope."""

    name: str
    scope: str

    def may(self, method: str) -> bool:
        """Read-only keys may only use safe methods."""
        return self.scope == "submit" or method in ("GET", "HEAD", "OPTIONS")


def hash_key(key: str) -> str:
    """SHA-256 hex of a key: keys are long random strings, so no slow KDF is needed."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_env_keys(raw: str) -> dict[str, Principal]:
    """JOBQ_API_KEYS: comma-separated `key`, `scope:key` or `name:scope:key` -> {hash: who}."""
    keys: dict[str, Principal] = {}
    for index, entry in enumerate(e.strip() for e in raw.split(",")):
        if not entry:
            continue
        parts = entry.split(":")
        name, scope, key = {
            1: (f"env-{index}", "submit", parts[0]),
            2: (f"env-{index}", *parts),
            3: tuple(parts),
        }.get(len(parts), ("", "", ""))
        if scope not in SCOPES or len(key) < 16:
            raise InvalidInput(
                f"JOBQ_API_KEYS entry {index}: use [name:]read|submit:KEY with a key of 16+ "
                "characters",
                field="JOBQ_API_KEYS",
            )
        keys[hash_key(key)] = Principal(name, scope)
    return keys


def credential(authorization: str | None) -> str | None:
    """The key in `Authorization: Bearer KEY` or `Basic base64(any:KEY)` (browsers)."""
    if not authorization:
        return None
    kind, _, value = authorization.partition(" ")
    if kind.lower() == "bearer":
        return value.strip() or None
    if kind.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class KeySet:
    """Env keys plus active table keys (reloaded every `ttl` s); constant-time lookups."""

    def __init__(self, env_keys: dict[str, Principal], sessions: sessionmaker[Session], ttl: float):
        self._env = env_keys
        self._sessions = sessions
        self._ttl = ttl
        self._table: dict[str, Principal] = {}
        self._loaded_at = -1e9
        self._lock = threading.Lock()

    def _current(self) -> dict[str, Principal]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self._ttl:
                try:
                    self._table = active_keys(self._sessions)
                except DatabaseUnavailable as exc:
                    # Keep the last good snapshot (none at first: fail closed) and retry later.
                    log.warning("could not reload API keys: %s", exc)
                self._loaded_at = time.monotonic()
            return {**self._table, **self._env}

    @property
    def has_env_keys(self) -> bool:
        """True when JOBQ_API_KEYS configured at least one key."""
        return bool(self._env)

    def table_count(self) -> int:
        """Active keys in the table right now (raises if PostgreSQL is unreachable)."""
        return len(active_keys(self._sessions))

    def lookup(self, key: str) -> Principal | None:
        """The principal for a presented key, comparing every stored hash in constant time."""
        presented = hash_key(key)
        found: Principal | None = None
        for stored, principal in self._current().items():
            if hmac.compare_digest(stored, presented):
                found = principal
        return found


def active_keys(sessions: sessionmaker[Session]) -> dict[str, Principal]:
    """{hash: principal} for the table's unrevoked keys."""
    with translate_db_errors(), sessions() as session:
        rows = session.execute(
            select(ApiKey.key_hash, ApiKey.name, ApiKey.scope).where(ApiKey.revoked_at.is_(None))
        ).all()
    return {h: Principal(n, s) for h, n, s in rows}


def create_key(sessions: sessionmaker[Session], name: str, scope: str) -> str:
    """Store a new key's hash under `name`; return the key (shown once)."""
    if scope not in SCOPES:
        raise InvalidInput("scope must be read or submit", field="scope")
    if not 1 <= len(name) <= 100 or "\x00" in name:
        raise InvalidInput("name must be 1..100 characters", field="name")
    key = new_key()
    with translate_db_errors(), sessions.begin() as session:
        if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
            raise Conflict(f"a key named {name!r} exists", field="name")
        session.add(ApiKey(id=uuid.uuid4(), name=name, scope=scope, key_hash=hash_key(key)))
    return key


def list_keys(sessions: sessionmaker[Session]) -> list[ApiKey]:
    """Every key, revoked ones included (hashes are not shown)."""
    with translate_db_errors(), sessions() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(sessions: sessionmaker[Session], name: str) -> None:
    """Revoke a key by name (effective in every API process within the reload interval)."""
    with translate_db_errors(), sessions.begin() as session:
        done = session.execute(
            update(ApiKey)
            .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(ApiKey.id)
        ).first()
    if done is None:
        raise NotFound(f"no active key named {name!r}", field="name")
