"""API keys: a name, scopes, limits and a fair-share weight and priority, stored hashed.

The keys file (`Settings.keys_file`, `keys.json` in the config dir) holds, per key, the
sha256 of its secret, never the secret itself: the secret (`lsk_` + 43 random URL-safe
characters, 256 bits) is shown once, when the key is added. Looking a secret up hashes
it and compares it with every stored hash in constant time. Writes are atomic (temp
file, fsync, rename; mode 0600) under a file lock, so the CLI editing the file locally
and the daemon editing it through `/api/keys` never lose each other's changes; the daemon
re-reads the file whenever it changed on disk, so a key revoked either way stops working
at once.

A revoked key stays in the file (marked `revoked_at`), so `keys list` can show it; its
name may be given to a new key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from localserve.access.scopes import normalize_scopes
from localserve.errors import BadRequestError, ConfigError, ConflictError, NotFoundError

log = logging.getLogger("localserve.access.keys")
SECRET_PREFIX = "lsk_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = frozenset({"anonymous", "api_key"})
LIMIT_FIELDS = ("rpm", "tpm", "concurrent")
FILE_VERSION = 1


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyLimits:
    """Per-key limits; 0 means unlimited. Tokens are prompt + generated."""

    rpm: int = 0  # requests per minute
    tpm: int = 0  # tokens per minute
    concurrent: int = 0  # requests at once

    def or_defaults(self, defaults: KeyLimits) -> KeyLimits:
        """Each limit this key leaves at 0 taken from `defaults` (the settings')."""
        return KeyLimits(
            rpm=self.rpm or defaults.rpm,
            tpm=self.tpm or defaults.tpm,
            concurrent=self.concurrent or defaults.concurrent,
        )


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret_hash: str
    scopes: tuple[str, ...] = ("model:*", "read")
    limits: KeyLimits = field(default_factory=KeyLimits)
    priority: int = 0  # higher is served first among waiting requests
    weight: float = 1.0  # share of the slots when several keys wait
    created_at: float = 0.0
    revoked_at: float | None = None
    hint: str = ""  # the secret's first characters, to tell keys apart in listings

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        """What listings show (never the hash)."""
        return {
            "name": self.name,
            "hint": self.hint,
            "scopes": list(self.scopes),
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "concurrent": self.limits.concurrent,
            "priority": self.priority,
            "weight": self.weight,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "active": self.active,
        }

    def to_json(self) -> dict[str, Any]:
        data = self.public()
        del data["active"]
        data["secret_hash"] = self.secret_hash
        return data


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise BadRequestError(
            f"name: {name!r} is not a valid key name (letters, digits, '.', '_', '-'; "
            "at most 64, starting with a letter or digit)"
        )
    if name.lower() in RESERVED_NAMES:
        raise BadRequestError(f"name: {name!r} is reserved")
    return name


def limit_value(field_name: str, raw: Any, error: type[Exception] = BadRequestError) -> int:
    """A limit: a whole number >= 0 (0: unlimited); anything else is `error` naming it."""
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise error(f"{field_name}: must be a whole number >= 0, got {raw!r}")
    if isinstance(raw, float) and not raw.is_integer():
        raise error(f"{field_name}: must be a whole number >= 0, got {raw!r}")
    if raw < 0:
        raise error(f"{field_name}: must be >= 0 (0 is unlimited), got {raw!r}")
    return int(raw)


def weight_value(raw: Any, error: type[Exception] = BadRequestError) -> float:
    if raw is None:
        return 1.0
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 1000:
        raise error(f"weight: must be a number in (0, 1000], got {raw!r}")
    return float(raw)


def priority_value(raw: Any, error: type[Exception] = BadRequestError) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or not -100 <= raw <= 100:
        raise error(f"priority: must be a whole number in [-100, 100], got {raw!r}")
    return raw


def _key_from_json(data: Any, where: str) -> ApiKey:
    """One stored key; a bad entry is a ConfigError naming the key and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: each key must be an object")
    name = data.get("name")
    label = f"{where}: key {name!r}"
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"{label}: invalid name")
    secret_hash = data.get("secret_hash")
    if not isinstance(secret_hash, str) or not re.fullmatch(r"[0-9a-f]{64}", secret_hash):
        raise ConfigError(f"{label}: secret_hash must be 64 hex digits")

    def checked(function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except BadRequestError as exc:
            raise ConfigError(f"{label}: {exc.message}") from exc

    limits = KeyLimits(
        **{f: checked(limit_value, f, data.get(f), BadRequestError) for f in LIMIT_FIELDS}
    )
    scopes = checked(normalize_scopes, data.get("scopes", ["model:*", "read"]))
    revoked = data.get("revoked_at")
    return ApiKey(
        name=name,
        secret_hash=secret_hash,
        scopes=scopes,
        limits=limits,
        priority=checked(priority_value, data.get("priority"), BadRequestError),
        weight=checked(weight_value, data.get("weight"), BadRequestError),
        created_at=float(data.get("created_at") or 0.0),
        revoked_at=float(revoked) if isinstance(revoked, int | float) else None,
        hint=str(data.get("hint", "")),
    )


class KeyStore:
    """The keys file: read on demand (again whenever it changed), written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int, int] | None = None  # (mtime_ns, size, inode)
        self._loaded = False

    # ---- reading -------------------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_file(self) -> dict[str, ApiKey]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read the keys file {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the keys file {self.path} is not valid JSON: {exc}") from exc
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f"the keys file {self.path} has no 'keys' list")
        keys = [_key_from_json(entry, str(self.path)) for entry in entries]
        return {key.name: key for key in keys}

    def keys(self) -> dict[str, ApiKey]:
        """Every key, active or revoked, by name (re-read when the file changed). A file
        that no longer reads (a bad hand edit) is a ConfigError the first time; after a
        good read, the last good keys stay in force and the error is logged."""
        stamp = self._file_stamp()
        if stamp != self._stamp or not self._loaded:
            try:
                self._keys = self._read_file()
            except ConfigError as exc:
                if not self._loaded:
                    raise
                log.error("%s; keeping the keys read before", exc)
            self._stamp = stamp
            self._loaded = True
        return self._keys

    def active(self) -> list[ApiKey]:
        return [key for key in self.keys().values() if key.active]

    def find(self, secret: str) -> ApiKey | None:
        """The active key with this secret; every stored hash is compared (constant time),
        so the answer's timing does not tell which keys exist."""
        digest = hash_secret(secret)
        found: ApiKey | None = None
        for key in self.keys().values():
            if hmac.compare_digest(digest, key.secret_hash) and key.active:
                found = key
        return found

    # ---- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKey]]:
        """The keys as on disk, under the file lock; what the block leaves is written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = dict(self._read_file())
            yield keys
            self._write(keys)
            self._keys = keys
            self._stamp = self._file_stamp()

    def _write(self, keys: dict[str, ApiKey]) -> None:
        body = {"version": FILE_VERSION, "keys": [k.to_json() for k in keys.values()]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o600)
                json.dump(body, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def add(
        self,
        name: str,
        *,
        scopes: list[str] | None = None,
        limits: KeyLimits | None = None,
        priority: int = 0,
        weight: float = 1.0,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once; only its hash is stored). A name held
        by an active key is a 409; a revoked key's name is reused."""
        validate_name(name)
        normalized = normalize_scopes(scopes if scopes is not None else ["model:*", "read"])
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            name=name,
            secret_hash=hash_secret(secret),
            scopes=normalized,
            limits=limits or KeyLimits(),
            priority=priority,
            weight=weight,
            created_at=time.time(),
            hint=secret[: len(SECRET_PREFIX) + 4],
        )
        with self._locked() as keys:
            existing = keys.get(name)
            if existing is not None and existing.active:
                raise ConflictError(f"a key named {name!r} exists (revoke it first)")
            keys[name] = key
        return key, secret

    def revoke(self, name: str) -> ApiKey:
        """Revoke a key at once; an unknown (or already revoked) name is a 404."""
        with self._locked() as keys:
            key = keys.get(name)
            if key is None or not key.active:
                raise NotFoundError(f"no active key named {name!r}")
            revoked = replace(key, revoked_at=time.time())
            keys[name] = revoked
        return revoked


def limits_json(limits: KeyLimits) -> dict[str, int]:
    return asdict(limits)
