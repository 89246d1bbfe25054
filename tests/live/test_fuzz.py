"""Schemathesis against a real server's own /openapi.json, authentication off and on.

Every operation in the document (every route, and each ready model's infer path) gets
requests generated from its schema, valid and invalid; none may answer 5xx, and every answer
must be one the document declares: its status, content type and JSON shape.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import onnx_models
from tests.auth.test_guard import TINY
from tests.live import ROOT, live_server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MODELS = ["tiny", "iris", "digits"]
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same requests on every run: a finding is reproducible
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _repository(root: Path, built: Path) -> Path:
    onnx_models.model_folder(root, "tiny", TINY, {1: onnx_models.dense(built / "model.onnx")})
    onnx_models.copy_samples(root)
    return root


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz-open")
    repository = _repository(tmp / "models", tmp / "built")
    env = {
        "CINFER_METRICS__ENABLED": "true",
        "CINFER_JOBS__ENABLED": "true",
        "CINFER_JOBS__DATABASE": str(tmp / "db" / "jobs.db"),
    }
    with live_server(repository, env=env) as (url, _):
        yield url


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("fuzz-guarded")
    repository = _repository(tmp / "models", tmp / "built")
    env = {
        "CINFER_AUTH__ENABLED": "true",
        "CINFER_AUTH__DATABASE": str(tmp / "db" / "cinfer.db"),
        "CINFER_METRICS__ENABLED": "true",
        "CINFER_JOBS__ENABLED": "true",
        "CINFER_JOBS__DATABASE": str(tmp / "db" / "jobs.db"),
    }
    made = subprocess.run(
        [sys.executable, "-m", "server", "tokens", "create", "--name", "fuzz",
         "--scope", "admin,read,infer"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    token = made.stdout.strip()
    assert token.startswith("cinfer_"), made.stderr
    with live_server(repository, env=env) as (url, _):
        yield url, token


def fuzz(url: str, headers: dict[str, str], token: str | None) -> list[str]:
    """Every operation of the server's document, positive and negative cases; the failures."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @FUZZ
        @given(case=strategy, model=st.sampled_from([None, *MODELS]))
        def run(case: Any, model: str | None) -> None:
            if model is not None and case.path.startswith("/v2/models/{model}"):
                # Mostly a model that exists, so the requests get past the 404.
                case.path_parameters = {**(case.path_parameters or {}), "model": model}
                if "{version}" in case.path:
                    case.path_parameters["version"] = "1"
            if case.path.startswith("/admin/tokens/{ref}") and case.method != "GET":
                # The one token the run holds must outlive it (deleting or revoking a token
                # is tested in tests/auth): a change goes to a token of the fuzzer's naming.
                case.path_parameters = {**(case.path_parameters or {}), "ref": "someone"}
            case.call_and_validate(headers=headers, checks=CHECKS)
            if token is not None:  # without it, whatever else is wrong: never a 5xx either
                case.call_and_validate(checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's finding, then fail
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return failures


def test_nothing_a_client_sends_is_a_5xx_or_undocumented(open_server: str) -> None:
    failures = fuzz(open_server, {}, None)
    assert not failures, "\n\n".join(failures)


def test_nothing_a_client_sends_is_a_5xx_or_undocumented_with_tokens(
    guarded_server: tuple[str, str],
) -> None:
    url, token = guarded_server
    failures = fuzz(url, {"Authorization": f"Bearer {token}"}, token)
    assert not failures, "\n\n".join(failures)
