"""Shared fixtures: one real local Ray for the session, real Optuna storages in tmp_path."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEARCH_SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

#: Lines a test adds to report how long something took (the deployment's build, start-up and studies); printed
#: at the end of the run. Reported, not asserted.
TIMINGS = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TIMINGS] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    # The deployment test's image builds from the session's start, beside the other tests (see its Build).
    modules = (getattr(item, "module", None) for item in session.items)
    deploy = next((m for m in modules if m is not None and m.__name__.endswith(".test_deploy")), None)
    if deploy is not None:
        deploy.start_early_build(session.config, session.items)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if config.stash.get(TIMINGS, []):
        terminalreporter.section("timings")
        for line in config.stash[TIMINGS]:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own empty directory (tuner's default work directory is the current one), and
    without the caller's tracking server, experiment or Ray cluster."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_RUN_ID",
        "RAY_ADDRESS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs, shared by every test that runs trials in-process."""
    import ray

    from tuner.trainable import WORKER_ENV

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": dict(WORKER_ENV)},
    )
    yield
    ray.shutdown()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tuner_command() -> str:
    """The ``tuner`` console script of the interpreter running the tests."""
    import sys

    return str(Path(sys.executable).with_name("tuner"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout: float = 90.0) -> None:
    import time

    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered at {url}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def optimizers_launch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One real ``tuner launch search_spaces/optimizers.yaml --trials 6 --epochs 3 --json`` process, whose
    work directory several tests inspect (Optuna's CLI, MLflow's client, ``tuner ui``)."""
    import json
    import subprocess

    workdir = tmp_path_factory.mktemp("optimizers")
    spec = ROOT / "search_spaces" / "optimizers.yaml"
    done = subprocess.run(
        [tuner_command(), "launch", str(spec), "--trials", "6", "--epochs", "3", "--json", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["_stdout"] = done.stdout
    return workdir, summary


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1, as a team would run one."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.start()
    finally:
        server.stop()


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with its store in ``root``, which a test can stop and start again
    (on the same port and store)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Any = None

    def start(self) -> str:
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1",
            ],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # MLflow starts uvicorn under it; stop the whole group
        )  # fmt: skip
        wait_for_http(f"{self.url}/health")
        return self.url

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto's) on 127.0.0.1 with an empty bucket ``tuner``; yields the
    environment a client (tuner, Ray's workers, pyarrow) needs to reach it."""
    import subprocess
    import sys

    import boto3

    port = free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "tuner-test",
        "AWS_SECRET_ACCESS_KEY": "tuner-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/")
        s3 = boto3.client(
            "s3", endpoint_url=url, aws_access_key_id="tuner-test", aws_secret_access_key="tuner-test",
            region_name="us-east-1",
        )  # fmt: skip
        s3.create_bucket(Bucket="tuner")
        yield {**env, "TUNER_TEST_S3_ENDPOINT": f"127.0.0.1:{port}"}
    finally:
        server.terminate()
        server.wait(timeout=30)
