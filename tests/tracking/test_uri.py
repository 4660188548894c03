"""``tracking.tracking_uri`` is checked against MLflow's store registry before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune_app.config import AppConfig, ConfigError, validate
from tune_app.tracking.uri import tracking_schemes, tracking_uri_problem


@pytest.mark.parametrize("uri", [
    None, "", "sqlite:///{tmp}/mlflow.db", "sqlite:///{tmp}/new/deeper/mlflow.db", "sqlite:///relative.db",
    "sqlite://", "file:{tmp}/mlruns", "{tmp}/mlruns", "http://127.0.0.1:5000", "https://mlflow.example.org",
    "postgresql://user@db.example.org/mlflow", "postgresql+psycopg2://db/mlflow", "mysql://db/mlflow",
    "databricks",
])
def test_accepted_uris(uri: str | None, tmp_path: Path) -> None:
    assert tracking_uri_problem(uri.format(tmp=tmp_path) if uri else uri) is None


@pytest.mark.parametrize("uri", ["notascheme://x", "s3://bucket/mlruns", "ftp://host/x", "sqlit:///typo.db"])
def test_unknown_scheme_names_key_and_accepted_schemes(uri: str) -> None:
    problem = tracking_uri_problem(uri)
    assert problem is not None and problem.startswith(f"tracking.tracking_uri={uri!r}")
    assert "sqlite" in problem and "http" in problem and "postgresql" in problem and "\n" not in problem


def test_registry_is_mlflows_own() -> None:
    assert {"sqlite", "http", "https", "file", "postgresql", "mysql", "databricks"} <= set(tracking_schemes())


def test_sqlite_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    problem = tracking_uri_problem(f"sqlite:///{blocker}/sub/mlflow.db")
    assert problem is not None and "tracking.tracking_uri=" in problem and "is a file" in problem
    (tmp_path / "dir.db").mkdir()
    problem = tracking_uri_problem(f"sqlite:///{tmp_path / 'dir.db'}")
    assert problem is not None and "is a folder" in problem


def test_validate_raises_a_config_error(tmp_path: Path) -> None:
    cfg = AppConfig()
    cfg.tune.storage_path = str(tmp_path)
    cfg.tracking.tracking_uri = "notascheme://x"
    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri='notascheme://x'"):
        validate(cfg)
    cfg.tracking.tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    validate(cfg)
