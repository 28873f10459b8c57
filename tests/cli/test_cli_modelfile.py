"""`localserve create -f Modelfile`, `show --modelfile` round trips, and `catalog`, against a
real daemon (tiny GGUF models)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cli_harness import CliDaemon
from typer.testing import CliRunner

from localserve.names import ModelName
from localserve.service.modelfile import parse_modelfile
from localserve.store import catalog

# isort: split
from localserve.cli.app import app

TinyModelFactory = Callable[..., Path]
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def show(cli_daemon: CliDaemon, name: str) -> dict[str, object]:
    result = cli_daemon.invoke("show", name, "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_create_from_a_modelfile_uploads_its_local_gguf(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    gguf = tiny_model("m")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "tiny.gguf").write_bytes(gguf.read_bytes())
    modelfile = write(
        tmp_path / "Modelfile",
        "# a relative FROM is read from the Modelfile's directory\n"
        "from ./weights/tiny.gguf\n"
        "PARAMETER temperature 0.25\n"
        'PARAMETER stop "<end>"\n'
        "PARAMETER stop <stop>\n"
        f'TEMPLATE """{TEMPLATE}"""\n'
        'system """You are terse.\nAnswer in one word."""\n',
    )
    result = cli_daemon.invoke("create", "From-Modelfile", "-f", str(modelfile))
    assert result.exit_code == 0, result.output
    assert "success" in result.stderr

    data = show(cli_daemon, "from-modelfile")  # any case finds it
    assert data["system"] == "You are terse.\nAnswer in one word."
    assert data["template"] == TEMPLATE
    assert "From-Modelfile:latest" in cli_daemon.invoke("list").stdout


def test_show_modelfile_round_trips_through_create(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    modelfile = write(
        tmp_path / "Modelfile",
        f"FROM {tiny_model('r')}\n"
        "PARAMETER top_k 7\n"
        'PARAMETER stop "<|im_end|>"\n'
        f'TEMPLATE """{TEMPLATE}"""\n'
        "SYSTEM Be kind.\n",
    )
    assert cli_daemon.invoke("create", "original-mf", "-f", str(modelfile)).exit_code == 0

    printed = cli_daemon.invoke("show", "original-mf", "--modelfile")
    assert printed.exit_code == 0, printed.output
    parsed = parse_modelfile(printed.stdout)
    assert parsed.from_.startswith("sha256:")
    assert parsed.template == TEMPLATE
    assert parsed.system == "Be kind."
    assert parsed.parameters == {"top_k": 7, "stop": ["<|im_end|>"]}

    again = write(tmp_path / "Modelfile.again", printed.stdout)
    result = cli_daemon.invoke("create", "copy-mf", "-f", str(again))
    assert result.exit_code == 0, result.output
    assert parse_modelfile(cli_daemon.invoke("show", "copy-mf", "--modelfile").stdout) == parsed
    assert show(cli_daemon, "copy-mf")["template"] == TEMPLATE


def test_a_modelfile_from_an_installed_model_derives_from_it(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    assert cli_daemon.invoke("create", "base-mf", "-f", str(tiny_model("b"))).exit_code == 0
    modelfile = write(tmp_path / "Modelfile", "FROM base-mf\nSYSTEM Derived.\n")
    result = cli_daemon.invoke("create", "derived-mf", "-f", str(modelfile))
    assert result.exit_code == 0, result.output
    assert show(cli_daemon, "derived-mf")["system"] == "Derived."
    parsed = parse_modelfile(cli_daemon.invoke("show", "derived-mf", "--modelfile").stdout)
    assert (
        parsed.from_
        == parse_modelfile(cli_daemon.invoke("show", "base-mf", "--modelfile").stdout).from_
    )  # the same blob


def test_the_command_line_system_overrides_the_modelfiles(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    modelfile = write(tmp_path / "Modelfile", f"FROM {tiny_model('o')}\nSYSTEM From the file.\n")
    result = cli_daemon.invoke(
        "create", "override-mf", "-f", str(modelfile), "--system", "From the flag."
    )
    assert result.exit_code == 0, result.output
    assert show(cli_daemon, "override-mf")["system"] == "From the flag."


def test_modelfile_errors_exit_2_naming_the_line(cli_daemon: CliDaemon, tmp_path: Path) -> None:
    cases = {
        "FROM x\nPARAMETER temperature 0.1\nFORM y\n": "line 3: unknown directive 'FORM'",
        "FROM x\nADAPTER ./lora.gguf\n": "ADAPTER is not supported",
        "FROM x\nPARAMETER top_k many\n": "line 2: PARAMETER top_k must be an integer",
        "FROM ./missing.gguf\n": "no such file",
        "SYSTEM no base\n": "no FROM line",
    }
    for index, (text, complaint) in enumerate(cases.items()):
        modelfile = write(tmp_path / f"Modelfile.{index}", text)
        result = cli_daemon.invoke("create", f"broken-{index}", "-f", str(modelfile))
        assert result.exit_code == 2, (text, result.output)
        assert complaint in result.stderr, (text, result.stderr)
    assert "broken-" not in cli_daemon.invoke("list").stdout


def test_a_modelfile_from_an_unknown_model_exits_4(cli_daemon: CliDaemon, tmp_path: Path) -> None:
    modelfile = write(tmp_path / "Modelfile", "FROM no-such-model:7b\n")
    result = cli_daemon.invoke("create", "orphan", "-f", str(modelfile))
    assert result.exit_code == 4, result.output


# ---- the catalog -----------------------------------------------------------------------------


def test_catalog_lists_the_familiar_names_with_their_repos() -> None:
    result = CliRunner().invoke(app, ["catalog"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ALSO", "FROM", "DESCRIPTION"]
    row = next(line for line in lines if line.startswith("llama3.2:3b"))
    assert "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M" in row
    assert "llama3.2" in row.split("hf.co/")[0]  # the bare name picks it


def test_catalog_json_holds_every_entry() -> None:
    result = CliRunner().invoke(app, ["catalog", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["models"]
    assert [row["name"] for row in rows] == catalog.names()
    for row in rows:
        ModelName.parse(row["name"])
        assert row["repo"].count("/") == 1


def test_pull_help_points_at_the_catalog() -> None:
    result = CliRunner().invoke(app, ["pull", "--help"])
    assert result.exit_code == 0
    assert "localserve catalog" in result.stdout
    assert "llama3.2" in result.stdout
