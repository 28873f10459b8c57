"""The cpu_heavy marker's machine-wide lock (tests/conftest.py): while a cpu_heavy test
runs, another process can not take the lock, so a second pytest run on the same machine
waits before its own cpu_heavy tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("held")
else:
    print("free")
"""


def other_process_finds(lock: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(lock)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


@pytest.mark.cpu_heavy  # spins nothing itself: it checks the lock the marker takes
def test_a_cpu_heavy_test_holds_the_machine_wide_lock(cpu_heavy_lock_path: Path) -> None:
    assert other_process_finds(cpu_heavy_lock_path) == "held"
    assert "test_a_cpu_heavy_test_holds_the_machine_wide_lock" in cpu_heavy_lock_path.read_text()


def test_the_cpu_heavy_marker_is_registered(pytestconfig: pytest.Config) -> None:
    assert any(line.startswith("cpu_heavy:") for line in pytestconfig.getini("markers"))
