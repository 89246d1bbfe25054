from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server import configfile
from server.errors import ConfigError
from server.settings import ServerSettings, Settings, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings = load(None, env={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.server.max_request_bytes == 64 * 1024 * 1024
    assert settings.server.log_level == "info"
    assert settings.repository.path == Path("repository")
    assert settings.auth.enabled is False  # only the shipped config.toml turns tokens on
    assert settings.auth.database == Path("data/cinfer.db")


def test_every_key_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nhost = "0.0.0.0"\nport = 9001\nmax_request_bytes = 1024\nlog_level = "debug"\n'
        '[repository]\npath = "models"\n',
    )
    settings = load(path, env={})
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9001
    assert settings.server.max_request_bytes == 1024
    assert settings.server.log_level == "debug"
    # A relative repository path is relative to the config file's folder.
    assert settings.repository.path == tmp_path / "models"


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "x"\nprot = 9000\n')
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    assert str(err.value) == f"{path} line 3: [server] prot: unknown key"


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[sever]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"line 1: sever: unknown key"):
        load(path, env={})


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    message = str(err.value)
    assert message.startswith(f"{path} line 2: [server] port:")
    assert "'eighty'" in message


def test_out_of_range_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[server\] port: Input should be less than or equal"):
        load(write(tmp_path, "[server]\nport = 70000\n"), env={})


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = = 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: invalid TOML: .*line 2"):
        load(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml", env={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    settings = load(
        path,
        env={"CINFER_SERVER__PORT": "9002", "CINFER_SERVER__LOG_LEVEL": "warning", "HOME": "/x"},
    )
    assert settings.server.port == 9002
    assert settings.server.log_level == "warning"


def test_cli_overrides_environment(tmp_path: Path) -> None:
    settings = load(
        None,
        env={"CINFER_SERVER__PORT": "9002", "CINFER_REPOSITORY__PATH": "/srv/models"},
        overrides={"server": {"port": 9003, "host": None}, "repository": {"path": None}},
    )
    assert settings.server.port == 9003
    assert settings.server.host == "127.0.0.1"  # None means "not given"
    assert settings.repository.path == Path("/srv/models")


def test_bad_environment_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"\[server\] port"):
        load(None, env={"CINFER_SERVER__PORT": "lots"})


def test_unknown_environment_variables_warn_and_are_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cinfer"):
        settings = load(
            None, env={"CINFER_AUHT__ENABLED": "false", "CINFER_SERVER__PROT": "1", "CINFER_X": "1"}
        )
    assert settings == Settings()
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "CINFER_AUHT__ENABLED" in messages and "no section [auht]" in messages
    assert "CINFER_SERVER__PROT" in messages and "no key 'prot'" in messages
    assert "CINFER_X" in messages


def test_shipped_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    settings = load(root / "config.toml", env={})
    assert settings.repository.path == root / "repository"
    assert settings.server.port == 8000
    assert settings.auth.enabled is True
    assert settings.auth.database == root / "data" / "cinfer.db"


def test_shipped_config_lists_every_server_key_at_its_default() -> None:
    """config.toml is where an operator finds the knobs: none of [server]'s is missing."""
    root = Path(__file__).resolve().parent.parent
    shipped = configfile.read(root / "config.toml")[0]["server"]
    defaults = ServerSettings().model_dump()
    assert set(shipped) == set(defaults)
    assert shipped == {key: defaults[key] for key in shipped}


def test_transport_limits_from_the_environment_and_their_bounds() -> None:
    server = load(
        None,
        env={
            "CINFER_SERVER__MAX_HEADER_BYTES": "8192",
            "CINFER_SERVER__MAX_HEADERS": "20",
            "CINFER_SERVER__HEADER_TIMEOUT_S": "0.5",
            "CINFER_SERVER__KEEP_ALIVE_S": "2",
            "CINFER_SERVER__MAX_CONNECTIONS": "5",
        },
    ).server
    assert (server.max_header_bytes, server.max_headers, server.max_connections) == (8192, 20, 5)
    assert (server.header_timeout_s, server.keep_alive_s) == (0.5, 2.0)
    for key in [
        "max_header_bytes",
        "max_headers",
        "header_timeout_s",
        "keep_alive_s",
        "max_connections",
    ]:
        with pytest.raises(ConfigError, match=rf"CINFER_SERVER__{key.upper()}: .*greater than 0"):
            load(None, env={f"CINFER_SERVER__{key.upper()}": "0"})


def test_auth_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[auth]\nenabled = true\ndatabase = "state/tokens.db"\ntrusted_proxies = ["10.0.0.1"]\n',
    )
    settings = load(
        path,
        env={
            "CINFER_AUTH__TRUSTED_PROXIES": '["10.0.0.0/8", "2001:db8::/32"]',
            "CINFER_AUTH__PUBLIC_METADATA": "true",
            "CINFER_AUTH__LOG_RETENTION_DAYS": "7",
        },
    )
    assert settings.auth.enabled is True
    assert settings.auth.database == tmp_path / "state" / "tokens.db"
    assert settings.auth.trusted_proxies == ["10.0.0.0/8", "2001:db8::/32"]
    assert settings.auth.public_metadata is True and settings.auth.log_retention_days == 7


def test_a_bad_trusted_proxy_names_the_entry(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth]\ntrusted_proxies = ["10.0.0.1/8"]\n')
    with pytest.raises(
        ConfigError, match=r"line 2: \[auth\] trusted_proxies: .*did you mean 10.0.0.0/8"
    ):
        load(path, env={})


def test_live_repository_settings(tmp_path: Path) -> None:
    defaults = load(None, env={})
    assert defaults.repository.mode == "watch"
    assert defaults.repository.settle_ms == 500
    assert defaults.server.shutdown_grace_s == 10
    path = write(
        tmp_path,
        '[server]\nshutdown_grace_s = 2.5\n[repository]\nmode = "explicit"\nsettle_ms = 0\n',
    )
    settings = load(path, env={"CINFER_REPOSITORY__SETTLE_MS": "1500"})
    assert settings.server.shutdown_grace_s == 2.5
    assert settings.repository.mode == "explicit"
    assert settings.repository.settle_ms == 1500


def test_unknown_repository_mode_names_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '[repository]\nmode = "poll"\n')
    with pytest.raises(ConfigError) as err:
        load(path, env={})
    message = str(err.value)
    assert message.startswith(f"{path} line 2: [repository] mode:")
    assert "'watch', 'startup' or 'explicit'" in message


def test_an_error_names_the_layer_the_value_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "0.0.0.0"\nport = 9001\n')
    with pytest.raises(ConfigError) as err:
        load(path, env={"CINFER_SERVER__PORT": "lots"})
    assert str(err.value).startswith("CINFER_SERVER__PORT: [server] port: Input should be")
    with pytest.raises(ConfigError) as err:
        load(path, env={}, overrides={"server": {"port": 70000}})
    assert str(err.value).startswith("command line: [server] port: Input should be less")


def test_settings_built_in_code_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CINFER_SERVER__PORT", "9005")
    assert Settings().server.port == 8000
    assert load(None).server.port == 9005  # load() reads os.environ when not given `env`
