from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server.errors import ConfigError
from server.repository import list_models, read_model


def make(root: Path, name: str, toml: str = 'engine = "onnxruntime"\n', versions=(1,)) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model.toml").write_text(toml)
    for v in versions:
        (folder / str(v)).mkdir()
    return folder


def test_lists_model_folders_skipping_hidden_files_and_bad_names(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make(repo, "b")
    make(repo, "a.v2_x-y")
    make(repo, ".hidden")
    make(repo, "bad name")
    (repo / "README.md").write_text("not a model")
    with caplog.at_level(logging.WARNING, logger="cinfer"):
        assert list_models(repo) == ["a.v2_x-y", "b"]
    assert "bad name" in caplog.text


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        list_models(tmp_path / "nope")


def test_read_model_selects_versions_by_policy(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make(repo, "m", 'engine = "onnxruntime"\n[version_policy]\nlatest = 2\n', (1, 2, 10))
    (folder / "old").mkdir()
    (folder / ".git").mkdir()
    with caplog.at_level(logging.WARNING, logger="cinfer"):
        source = read_model(repo, "m")
    assert source.versions == {2: folder / "2", 10: folder / "10"}
    assert source.config.engine == "onnxruntime"
    assert "old" in caplog.text and "version folders are numeric" in caplog.text
    assert ".git" not in caplog.text


def test_missing_model_toml(repo: Path) -> None:
    (repo / "m" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"m/model.toml: file not found"):
        read_model(repo, "m")


def test_model_toml_errors_name_the_file_and_line(repo: Path) -> None:
    make(repo, "m", 'engine = "onnxruntime"\ninstance = 2\n')
    with pytest.raises(ConfigError, match=r"m/model.toml line 2: instance: unknown key"):
        read_model(repo, "m")


def test_no_version_folder(repo: Path) -> None:
    make(repo, "m", versions=())
    with pytest.raises(ConfigError, match="no numeric version folder"):
        read_model(repo, "m")


def test_policy_selecting_nothing(repo: Path) -> None:
    make(repo, "m", 'engine = "onnxruntime"\n[version_policy]\nspecific = [5]\n', (1, 2))
    with pytest.raises(ConfigError, match=r"selects none of the versions on disk \[1, 2\]"):
        read_model(repo, "m")


def test_invalid_name(repo: Path) -> None:
    with pytest.raises(ConfigError, match="invalid model name"):
        read_model(repo, "../etc")
