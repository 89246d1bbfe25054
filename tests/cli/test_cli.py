"""The `cinfer` command: default command, config discovery, overrides, start-up errors."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from server.cli import main
from tests import onnx_models
from tests.live import ROOT, free_port

CINFER = Path(sys.executable).parent / "cinfer"


def wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("server did not become ready")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


def test_bare_cinfer_serves_with_config_toml_in_the_working_folder(tmp_path: Path) -> None:
    onnx_models.copy_samples(tmp_path / "models")
    port = free_port()
    (tmp_path / "config.toml").write_text(
        f'[server]\nport = {port}\nlog_level = "info"\n[repository]\npath = "models"\n'
    )
    proc = subprocess.Popen(
        [str(CINFER)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        models = httpx.post(f"http://127.0.0.1:{port}/v2/repository/index").json()
        assert {m["name"] for m in models} == {"digits", "iris"}
    finally:
        out = stop(proc)
    assert "model iris version 1: LOADING -> READY" in out


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    onnx_models.copy_samples(tmp_path / "models")
    port = free_port()
    (tmp_path / "config.toml").write_text('[server]\nport = 1\n[repository]\npath = "nowhere"\n')
    env = {
        **os.environ,
        "CINFER_SERVER__PORT": str(port),
        "CINFER_REPOSITORY__PATH": "/also/nowhere",
        "CINFER_FUTURE__SETTING": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--repository", str(tmp_path / "models")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        out = stop(proc)
    assert "ignoring unknown setting CINFER_FUTURE__SETTING" in out


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[server]\nprot = 1\n", "config.toml line 2: [server] prot: unknown key"),
        (
            '[server]\nport = "x"\n',
            "config.toml line 2: [server] port: Input should be a valid integer",
        ),
        ('[repository]\npath = "missing"\n', "does not exist or is not a folder"),
    ],
)
def test_start_up_errors_name_the_problem(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "server", "--config", str(tmp_path / "config.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """`cinfer` in-process, in an empty folder (no ./config.toml) and without CINFER_*."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner(env={name: None for name in os.environ if name.startswith("CINFER_")})
    # serve set up logging on the runner's stderr, which is closed once it returns.
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("command", [[], ["serve"]])
def test_serve_is_the_default_command(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    # A taken port makes serve stop before it loads anything: the message shows that the
    # command that ran was serve, with the flags given.
    (tmp_path / "models").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(main, [*command, "--repository", "models", "--port", str(port)])
    assert result.exit_code == 3
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.stderr


def test_version(runner: CliRunner) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    result = runner.invoke(main, ["--version"])
    assert (result.exit_code, result.stdout.strip()) == (0, "cinfer 0.1.0")


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--colour", "blue"])
    assert exited.value.code == 2
    assert "No such option '--colour'" in capsys.readouterr().err


def test_serve_options_before_another_command_are_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--config", "x.toml", "tokens", "list"])
    assert result.exit_code == 2
    assert "--config before the command 'tokens'" in result.stderr


def test_every_command_and_option_has_help(runner: CliRunner) -> None:
    import click

    def walk(command: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])

    for path, command in walk(main, []):
        assert command.help, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, (path, param.name)
        assert runner.invoke(main, [*path, "--help"]).exit_code == 0, path
