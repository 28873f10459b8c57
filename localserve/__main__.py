"""`python -m localserve`: run the daemon in the foreground (same as `localserve serve`)."""

import sys

from localserve.api.app import serve
from localserve.config import load_settings
from localserve.errors import ConfigError

if __name__ == "__main__":
    try:
        settings = load_settings().validate()
    except ConfigError as exc:
        print(f"localserve: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(settings))
