"""The localserve command line (typer): `localserve serve|run|list|ps|show|...`.

Importable as `localserve.cli`; the console script is `localserve.cli.app:main`.
The CLI talks to the daemon only through `localserve.client.LocalserveClient`.
"""
