"""Packaging: cli/ and tui/ install as localserve.cli / localserve.tui (wheel and editable),
never as top-level modules, and the core never imports a UI package."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UI_PACKAGES = ("typer", "rich", "textual")


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_daemon_starts_without_importing_ui_packages(tmp_path: Path) -> None:
    code = (
        "import sys, localserve.api.app, localserve.client.http, localserve.scheduling.scheduler, "
        "localserve.runner.main, localserve.store.store, localserve.config\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({UI_PACKAGES!r})))"
    )
    assert run_python(code, tmp_path) == "[]"


def test_core_sources_have_no_ui_imports() -> None:
    offenders = []
    for path in (REPO / "localserve").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                if module in UI_PACKAGES:
                    offenders.append(f"{path.name}: {stripped}")
    assert offenders == []


def test_installed_package_maps_cli_and_tui_into_the_namespace(tmp_path: Path) -> None:
    code = (
        "import importlib.util, localserve.cli, localserve.tui\n"
        "print(localserve.cli.__file__)\n"
        "print(importlib.util.find_spec('cli'), importlib.util.find_spec('tui'))"
    )
    cli_file, top_level = run_python(code, tmp_path).splitlines()
    assert Path(cli_file).name == "__init__.py"
    assert top_level == "None None"


def test_wheel_holds_cli_and_tui_under_localserve_only(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("localserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "localserve/cli/app.py" in names
    assert "localserve/tui/__init__.py" in names
    assert "localserve/store/catalog.toml" in names  # the catalog of familiar names
    assert "localserve/py.typed" in names
    assert not [n for n in names if n.startswith(("cli/", "tui/", "tests/"))]
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = "import localserve.cli.app, localserve.tui; print(localserve.cli.app.__file__)"

    env = {**os.environ, "PYTHONPATH": str(site)}
    assert run_python(code, tmp_path, env).startswith(str(site))


@pytest.mark.parametrize(
    ("shell", "filename"),
    [("bash", "localserve.bash"), ("zsh", "_localserve"), ("fish", "localserve.fish")],
)
def test_packaged_completion_scripts_match_what_the_cli_generates(
    shell: str, filename: str
) -> None:
    """`make completions` writes them; a CLI change that alters them must refresh them."""
    generated = subprocess.run(
        [sys.executable, "-m", "localserve.cli.app"],
        env={**os.environ, "_LOCALSERVE_COMPLETE": f"source_{shell}"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packaged = (REPO / "packaging" / "completions" / filename).read_text()
    assert packaged.strip() == generated.strip()
    if shell == "zsh":
        assert packaged.startswith("#compdef localserve")  # zsh reads only the first line
