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

from .conftest import ROOT

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
