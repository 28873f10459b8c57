"""`localserve serve` that SIGKILLs itself at one point of one store operation, for the
lost-connection tests: `DYING_DAEMON=after:copy` dies right after `Store.copy` returns
(the operation finished, its answer never sent), `before:copy` right before it starts.

Run as a script: `python tests/cli/dying_daemon.py` with the LOCALSERVE_* environment.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    from localserve.api.app import serve
    from localserve.config import load_settings
    from localserve.store.store import Store

    when, method = os.environ["DYING_DAEMON"].split(":")
    original = getattr(Store, method)

    def dying(self: Store, *args: Any, **kwargs: Any) -> Any:
        if when == "before":
            die()
        result = original(self, *args, **kwargs)
        die()
        return result

    setattr(Store, method, dying)
    return serve(load_settings().validate())


if __name__ == "__main__":
    sys.exit(main())
