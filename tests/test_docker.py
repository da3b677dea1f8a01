"""docker/ as far as a machine without a Docker engine can check it: the Dockerfile passes hadolint, the
compose file validates against the compose specification, and the deployment is secure by default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([str(BIN / "hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_follows_the_compose_specification() -> None:
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DOCKER / "compose.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", ["ray-node.sh", "mlflow-server.sh"])
def test_start_scripts_are_valid_bash(script: str) -> None:
    subprocess.run(["bash", "-n", str(DOCKER / script)], check=True)


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_published_ports_listen_on_loopback_only() -> None:
    published = [p for service in compose()["services"].values() for p in service.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published)


def test_ray_nodes_start_with_the_script_the_cluster_tests_run() -> None:
    services = compose()["services"]
    assert services["ray-head"]["command"] == ["docker/ray-node.sh", "head"]
    assert services["ray-worker"]["command"] == ["docker/ray-node.sh", "worker"]
    script = (DOCKER / "ray-node.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in script  # token authentication is not optional


def test_mlflow_runs_with_authentication_and_secrets_stay_out_of_git() -> None:
    assert compose()["services"]["mlflow"]["command"] == ["docker/mlflow-server.sh"]
    assert "--app-name basic-auth" in (DOCKER / "mlflow-server.sh").read_text()
    example = (DOCKER / ".env.example").read_text()
    for key in ("RAY_AUTH_TOKEN=", "MLFLOW_ADMIN_PASSWORD=", "POSTGRES_PASSWORD="):
        assert f"\n{key}\n" in example  # present, and empty: the user fills them in
    ignored = subprocess.run(["git", "check-ignore", "docker/.env"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.returncode == 0, ".env must be ignored by git"
