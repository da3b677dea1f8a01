"""docker/'s files as far as no Docker engine is needed: hadolint, the compose specification, the secrets each
service asks for, the start scripts' refusals. The real deployment is tests/test_deploy.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, write

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
BIN = Path(sys.executable).parent


def example_secrets() -> list[str]:
    """The secrets docker/.env.example names: its lines ``NAME=`` left empty for the user to fill in."""
    lines = (DOCKER / ".env.example").read_text().splitlines()
    return [line[:-1] for line in lines if re.fullmatch(r"[A-Z_]+=", line)]


def compose_file() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([str(BIN / "hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_follows_the_compose_specification() -> None:
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", ["ray-node.sh", "mlflow-server.sh"])
def test_start_scripts_are_valid_bash(script: str) -> None:
    subprocess.run(["bash", "-n", str(DOCKER / script)], check=True)


def test_published_ports_listen_on_loopback_only() -> None:
    published = [p for service in compose_file()["services"].values() for p in service.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published)


def test_every_secret_is_asked_for_once_in_env_example_and_required_by_compose() -> None:
    asked = example_secrets()
    assert sorted(asked) == [
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "POSTGRES_PASSWORD",
        "RAY_AUTH_TOKEN",
    ]
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert required == set(asked)  # compose refuses to start without each, and needs no other
    assert "PASSWORD" not in " ".join(re.findall(r"postgresql\S*", COMPOSE.read_text()))  # no URI holds one
    ignored = subprocess.run(["git", "check-ignore", "docker/.env"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.returncode == 0, ".env must be ignored by git"


def test_mlflow_runs_with_authentication() -> None:
    assert compose_file()["services"]["mlflow"]["command"] == ["docker/mlflow-server.sh"]
    assert "--app-name basic-auth" in (DOCKER / "mlflow-server.sh").read_text()


MLFLOW_SETTINGS = {
    "MLFLOW_ADMIN_USERNAME": "admin",
    "MLFLOW_ADMIN_PASSWORD": "a-password-of-24-letters",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "key",
    "MLFLOW_BACKEND_STORE_URI": "sqlite:///nowhere.db",
}


@pytest.mark.parametrize("missing", sorted(MLFLOW_SETTINGS))
def test_mlflow_server_script_names_a_missing_setting_in_one_line(missing: str) -> None:
    env = {**os.environ, **MLFLOW_SETTINGS, missing: ""}
    done = subprocess.run(["bash", str(DOCKER / "mlflow-server.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"mlflow-server.sh: {missing} is not set; put it in docker/.env (see docker/.env.example)"
    )


def test_mlflow_server_script_refuses_a_short_admin_password() -> None:
    env = {**os.environ, **MLFLOW_SETTINGS, "MLFLOW_ADMIN_PASSWORD": "short"}
    done = subprocess.run(["bash", str(DOCKER / "mlflow-server.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mlflow-server.sh: MLFLOW_ADMIN_PASSWORD must have at least 12 characters (MLflow's rule), got 5"
    ]


def test_mlflow_server_script_hands_mlflow_its_auth_settings(tmp_path: Path) -> None:
    """What the script hands ``mlflow server``, as MLflow's own reader takes it: the admin account (a password
    with the characters configparser treats specially), a database without a password, the login cache."""
    stub = write(
        tmp_path / "bin" / "mlflow",
        '#!/bin/sh\ncp "$MLFLOW_AUTH_CONFIG_PATH" "$OUT/auth.ini"\necho "$@" > "$OUT/args"\nenv > "$OUT/env"\n',
    )
    stub.chmod(0o755)
    settings = {**MLFLOW_SETTINGS, "MLFLOW_ADMIN_PASSWORD": "100%-secret-$x", "OUT": str(tmp_path)}
    settings["MLFLOW_BACKEND_STORE_URI"] = "postgresql+psycopg://tuner@postgres:5432/mlflow?application_name=a%20b"
    env = {**os.environ, **settings, "PATH": f"{stub.parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(DOCKER / "mlflow-server.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--app-name basic-auth" in (tmp_path / "args").read_text()
    ini = (tmp_path / "auth.ini").read_text()
    assert settings["MLFLOW_ADMIN_PASSWORD"] not in ini  # no secret in the file
    handed = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    code = (
        "from mlflow.server.auth.config import read_auth_config as r; c = r(); "
        "print(c.admin_username, c.admin_password, c.database_uri, c.auth_cache_ttl_seconds, sep='\\n')"
    )
    keys = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")
    read = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), **{k: handed[k] for k in keys}},
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == [
        "admin",
        settings["MLFLOW_ADMIN_PASSWORD"],
        settings["MLFLOW_BACKEND_STORE_URI"],
        "60",
    ]
