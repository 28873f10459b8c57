"""The RAM probe: what the scheduler's budget and its memory-pressure watch read.

`MemoryProbe` is the small interface; `PsutilMemoryProbe` the real one (psutil is imported
on first use). Tests use a fake with a settable `available`.
"""

from __future__ import annotations

from typing import Protocol


class MemoryProbe(Protocol):
    def available_ram(self) -> int: ...

    def total_ram(self) -> int: ...


class PsutilMemoryProbe:
    def available_ram(self) -> int:
        import psutil

        return int(psutil.virtual_memory().available)

    def total_ram(self) -> int:
        import psutil

        return int(psutil.virtual_memory().total)
