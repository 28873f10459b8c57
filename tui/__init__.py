"""The Textual TUI (installed as `localserve.tui`); an HTTP client of the daemon only."""
