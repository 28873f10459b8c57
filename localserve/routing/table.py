"""The route table: every route's targets, revision and history, in one JSON file.

    <store root>/routes.json    {"version": 1, "routes": {...}, "rollouts": {...}}

The file is rewritten whole on every change (temp file, fsync, rename: see
`localserve.store.store.atomic_write_bytes`), under a file lock (`routes.lock`) that
serialises writers across processes, so a daemon killed at any moment restarts with the
table as it was before or after the last change, never a mix. Each edit reads the file
again under the lock (another process may have changed it) and may name the revision it
expects: a route changed in between is a 409 and nothing is written.

A route's `revision` counts its changes (1 for the first `set`); each change appends a
history entry (time, the old and new targets, who: "cli", "api" or "rollout", a
reason). `rollback` sets the targets of an earlier entry and is itself a change.
Rollouts (`localserve.routing.rollout`) keep their state in the same file, so a route
change and its rollout step are written together.

All methods block (file I/O); the daemon calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from localserve.errors import BadRequestError, ConflictError, NotFoundError
from localserve.names import ModelName
from localserve.store.store import atomic_write_bytes

TABLE_FILE = "routes.json"
LOCK_FILE = "routes.lock"
FORMAT_VERSION = 1
HISTORY_LIMIT = 200  # entries kept per route (the oldest go first)
MAX_TARGETS = 16
WHO = ("cli", "api", "rollout", "tui")


class RouteNotFoundError(NotFoundError):
    code = "route_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"route '{name}' not found")
        self.name = name


class RevisionConflictError(ConflictError):
    code = "revision_conflict"


@dataclass(frozen=True)
class Target:
    """One version behind a route and its share of the traffic (a relative weight)."""

    model: str
    weight: float

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "weight": self.weight}

    @classmethod
    def from_json(cls, data: Any) -> Target:
        if not isinstance(data, dict):
            raise BadRequestError("targets: each target must be an object {model, weight}")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("targets: each target needs a 'model' string")
        weight = data.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise BadRequestError(f"targets: the weight of {model} must be a number")
        return cls(model, float(weight))


def check_targets(name: str, targets: list[Target]) -> list[Target]:
    """Weights that are finite and not negative, not all zero; one entry per model
    (names compared as the store compares them); a route never names itself."""
    if not targets:
        raise BadRequestError("targets: a route needs at least one target")
    if len(targets) > MAX_TARGETS:
        raise BadRequestError(f"targets: at most {MAX_TARGETS} targets")
    seen: set[tuple[str, str, str, str]] = set()
    route_key = ModelName.parse(name).key()
    for target in targets:
        parsed = ModelName.parse(target.model)
        if parsed.key() == route_key:
            raise BadRequestError(f"targets: route '{name}' cannot point at itself")
        if parsed.key() in seen:
            raise BadRequestError(f"targets: {target.model} is named twice")
        seen.add(parsed.key())
        if not math.isfinite(target.weight) or target.weight < 0:
            raise BadRequestError(
                f"targets: the weight of {target.model} must be a number >= 0, not {target.weight}"
            )
    if sum(t.weight for t in targets) <= 0:
        raise BadRequestError("targets: the weights are all zero")
    return targets


@dataclass(frozen=True)
class Change:
    """One history entry: the route went from `old` to `new` at `revision`."""

    revision: int
    time: float
    old: list[Target]
    new: list[Target]
    who: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "time": self.time,
            "old": [t.to_json() for t in self.old],
            "new": [t.to_json() for t in self.new],
            "who": self.who,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(
            revision=int(data["revision"]),
            time=float(data["time"]),
            old=[Target.from_json(t) for t in data.get("old", [])],
            new=[Target.from_json(t) for t in data.get("new", [])],
            who=str(data.get("who", "api")),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True)
class Route:
    name: str  # the display name, e.g. "assistant:latest"
    targets: list[Target]
    revision: int
    history: list[Change] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return ModelName.parse(self.name).key()

    def uses(self, model: str) -> bool:
        wanted = ModelName.parse(model).key()
        return any(ModelName.parse(t.model).key() == wanted for t in self.targets)

    def shares(self) -> dict[str, float]:
        """Each target's share of the traffic, 0..1."""
        total = sum(t.weight for t in self.targets) or 1.0
        return {t.model: t.weight / total for t in self.targets}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "targets": [t.to_json() for t in self.targets],
            "revision": self.revision,
            "history": [c.to_json() for c in self.history],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        return cls(
            name=str(data["name"]),
            targets=[Target.from_json(t) for t in data["targets"]],
            revision=int(data["revision"]),
            history=[Change.from_json(c) for c in data.get("history", [])],
        )


@dataclass
class TableData:
    routes: dict[str, Route] = field(default_factory=dict)  # by display name
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by route name

    def find(self, raw_name: str) -> Route | None:
        key = ModelName.parse(raw_name).key()
        return next((r for r in self.routes.values() if r.key == key), None)

    def to_json(self) -> bytes:
        body = {
            "version": FORMAT_VERSION,
            "routes": {name: route.to_json() for name, route in sorted(self.routes.items())},
            "rollouts": self.rollouts,
        }
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TableData:
        body = json.loads(raw)
        routes = {name: Route.from_json(r) for name, r in body.get("routes", {}).items()}
        return cls(routes=routes, rollouts=dict(body.get("rollouts", {})))


class RouteTable:
    """The table on disk, with a copy in memory (`data`) that reads use without I/O."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.path = root / TABLE_FILE
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._file_lock = FileLock(str(root / LOCK_FILE), timeout=30)
        self._thread_lock = threading.Lock()
        self._clock = clock
        self.data = self._read()

    def _read(self) -> TableData:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return TableData()
        return TableData.from_json(raw)

    @contextmanager
    def _editing(self) -> Iterator[TableData]:
        """The table as on disk now, to change in place; written back on success."""
        with self._thread_lock, self._file_lock:
            data = self._read()
            yield data
            atomic_write_bytes(self.path, data.to_json(), self.tmp_dir)
            self.data = data

    def reload(self) -> TableData:
        with self._thread_lock:
            self.data = self._read()
            return self.data

    # ---- reads -------------------------------------------------------------------------

    def get(self, raw_name: str) -> Route:
        route = self.data.find(raw_name)
        if route is None:
            raise RouteNotFoundError(raw_name)
        return route

    def find(self, raw_name: str) -> Route | None:
        return self.data.find(raw_name)

    def all(self) -> list[Route]:
        return sorted(self.data.routes.values(), key=lambda r: r.name)

    def using(self, model: str) -> list[Route]:
        return [r for r in self.all() if r.uses(model)]

    # ---- changes -----------------------------------------------------------------------

    def set(
        self,
        raw_name: str,
        targets: list[Target],
        *,
        who: str,
        reason: str = "",
        expected_revision: int | None = None,
        rollout: dict[str, Any] | None = None,
        clear_rollout: bool = False,
    ) -> Route:
        """Point a route (creating it) at `targets`; 409 when `expected_revision` is
        given and is not the route's revision (0 expects no route). `rollout` writes
        that rollout state in the same write (`clear_rollout` removes it)."""
        name = ModelName.parse(raw_name).display()
        check_targets(name, targets)
        with self._editing() as data:
            current = data.find(name)
            revision = current.revision if current else 0
            if expected_revision is not None and expected_revision != revision:
                raise RevisionConflictError(
                    f"route '{name}' is at revision {revision}, not {expected_revision}: "
                    "it changed since you read it (read it again, then retry)"
                )
            if current is not None:
                name = current.name
                data.routes.pop(current.name)
            old = current.targets if current else []
            change = Change(revision + 1, self._clock(), old, targets, who, reason)
            history = [*(current.history if current else []), change][-HISTORY_LIMIT:]
            route = Route(name, targets, revision + 1, history)
            data.routes[name] = route
            if rollout is not None:
                data.rollouts[name] = rollout
            elif clear_rollout:
                data.rollouts.pop(name, None)
        return route

    def delete(self, raw_name: str, *, expected_revision: int | None = None) -> Route:
        with self._editing() as data:
            current = data.find(raw_name)
            if current is None:
                raise RouteNotFoundError(raw_name)
            if expected_revision is not None and expected_revision != current.revision:
                raise RevisionConflictError(
                    f"route '{current.name}' is at revision {current.revision}, "
                    f"not {expected_revision}"
                )
            data.routes.pop(current.name)
            data.rollouts.pop(current.name, None)
        return current

    def rollback_targets(self, raw_name: str, to: int | None) -> tuple[list[Target], str]:
        """The targets a rollback sets, and the reason it records: those the route had
        before its last change (None), or right after revision `to`."""
        route = self.get(raw_name)
        if to is None:
            last = route.history[-1] if route.history else None
            if last is None or not last.old:
                raise ConflictError(f"route '{route.name}' has no earlier state to roll back to")
            return list(last.old), f"rollback to before revision {last.revision}"
        entry = next((c for c in route.history if c.revision == to), None)
        if entry is None:
            known = ", ".join(str(c.revision) for c in route.history)
            raise NotFoundError(
                f"route '{route.name}' has no revision {to} in its history (known: {known})"
            )
        return list(entry.new), f"rollback to revision {to}"

    def save_rollout(self, route_name: str, state: dict[str, Any] | None) -> None:
        """Write (or with None remove) a rollout's state alone."""
        with self._editing() as data:
            if state is None:
                data.rollouts.pop(route_name, None)
            else:
                data.rollouts[route_name] = state
