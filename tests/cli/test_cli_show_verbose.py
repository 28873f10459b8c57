"""`localserve show --verbose` (issue 13): the tokenizer arrays the daemon's `/api/show`
returns with `verbose: true`, as sizes in the text layout and whole with `--json`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cli_harness import CliDaemon
from gguf_factory import VOCAB


def test_show_verbose_adds_the_tokenizer(
    cli_daemon: CliDaemon, tiny_model: Callable[..., Path]
) -> None:
    result = cli_daemon.invoke("create", "verbose-shown", "-f", str(tiny_model("v")))
    assert result.exit_code == 0, result.output

    plain = cli_daemon.invoke("show", "verbose-shown")
    assert plain.exit_code == 0, plain.output
    assert "Tokenizer" not in plain.stdout

    verbose = cli_daemon.invoke("show", "verbose-shown", "--verbose")
    assert verbose.exit_code == 0, verbose.output
    assert "Tokenizer" in verbose.stdout
    assert f"tokens         {VOCAB}" in verbose.stdout

    data = json.loads(cli_daemon.invoke("show", "verbose-shown", "--verbose", "--json").stdout)
    assert len(data["model_info"]["tokenizer.ggml.tokens"]) == VOCAB
    data = json.loads(cli_daemon.invoke("show", "verbose-shown", "--json").stdout)
    assert "tokenizer.ggml.tokens" not in data["model_info"]
