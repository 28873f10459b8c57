"""Access: API keys with scopes (`keys`, `scopes`), per-key limits (`limits`), usage
accounting (`usage`), and the service the HTTP layer calls (`service`)."""
