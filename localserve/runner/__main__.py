"""`python -m localserve.runner --fd N`: one runner process (see localserve.runner.main)."""

import sys

from localserve.runner.main import main

sys.exit(main())
