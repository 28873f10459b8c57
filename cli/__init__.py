"""The localserve command line (typer): `localserve serve|run|list|ps|show|...`.

Importable as `localserve.cli`; the console script is `localserve.cli.app:main`.
The CLI talks to the daemon only through `localserve.client.http.LocalserveClient`.

    app          the typer app, assembled from the command modules; exit-code table
    errors       exit codes, error messages, `cli_errors`
    common       settings, starting the daemon, the client, spinners, completion
    daemon_cmds  serve, daemon start|stop|status
    run, repl    run; the interactive session (parsing and loop)
    chat         streaming a chat answer, load progress, pull-then-run
    models       list (ls), ps, show, stop, pin, unpin
    store_cmds   create, cp, rm, pull; `recovery` after a lost connection
    progress     byte progress bars (hash, upload, pull)
    render       Ollama's tables, timing lines and Modelfile (sizes and times come
                 from `localserve.client.display`, shared with the TUI)
"""
