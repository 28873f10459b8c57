"""localserve: a local model manager daemon (store, runners, scheduler, HTTP API)."""

__version__ = "0.1.0"
