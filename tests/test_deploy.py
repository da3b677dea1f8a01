"""docker/ for real: the image is built from this checkout, the compose stack started as the README says, studies
submitted from the host with ``tuner submit``, a worker killed mid-study, the stack restarted with its volumes,
and taken down again; and the GPU image's build, where there is time for it.

It needs a Docker engine and Compose v2 (``.ci/run`` installs and starts them). Without them these tests skip,
saying so, unless TUNER_REQUIRE_DOCKER is set (CI sets it): then they fail. The base images are TUNER_BASE_IMAGE
and POSTGRES_IMAGE as compose reads them; unset, the stand-ins that ``../shared/docker-standins/build.sh``
builds from Debian packages, where that script is.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import ROOT, TIMINGS, free_port, tuner_command, write
from .test_docker import COMPOSE, DOCKER, example_secrets

STANDINS = ROOT.parent / "shared" / "docker-standins" / "build.sh"
PARENT_TAG = "mlflow.parentRunId"
#: The ports the stack publishes on the host (127.0.0.1), each set in its env file.
PORTS = ("MLFLOW_HOST_PORT", "RAY_DASHBOARD_HOST_PORT", "RAY_CLIENT_HOST_PORT")


def docker_missing() -> str | None:
    """Why the deployment cannot run here, or None."""
    if not shutil.which("docker"):
        return "no docker command"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers (docker info)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "no Compose v2 (docker compose version)"
    return None


@pytest.fixture(scope="module")
def docker() -> None:
    reason = docker_missing()
    if reason and os.environ.get("TUNER_REQUIRE_DOCKER"):
        pytest.fail(f"TUNER_REQUIRE_DOCKER is set, but {reason}")
    if reason:
        pytest.skip(f"{reason}: .ci/run installs and starts what the deployment test needs")


def base_images() -> dict[str, str]:
    """The base images as compose would read them, or the local stand-ins where they can be built."""
    given = {k: os.environ[k] for k in ("TUNER_BASE_IMAGE", "POSTGRES_IMAGE") if os.environ.get(k)}
    if len(given) == 2 or not STANDINS.is_file():
        return given
    built = subprocess.run(["bash", str(STANDINS)], capture_output=True, text=True, timeout=900, check=True)
    python, postgres = built.stdout.split()
    return {"TUNER_BASE_IMAGE": python, "POSTGRES_IMAGE": postgres, **given}


@dataclass
class Stack:
    """The compose stack as a user runs it, under a project name of its own, with its ports free here."""

    project: str
    env_file: Path
    settings: dict[str, str]
    studies: dict[str, list[str]] = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.settings['RAY_DASHBOARD_HOST_PORT']}"

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.settings['MLFLOW_HOST_PORT']}"

    def _env(self) -> dict[str, str]:
        # Nothing from the caller's shell overrides what the env file says (compose prefers the environment).
        return {k: v for k, v in os.environ.items() if k not in self.settings and not k.startswith("RAY_")}

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        command = ["docker", "compose", "--env-file", str(self.env_file), "-f", str(COMPOSE), "-p", self.project]
        done = subprocess.run([*command, *args], env=self._env(), capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, (
                f"docker compose {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def tuner(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """A tuner command on the host, with what the README says to export: the token (and nothing else)."""
        env = {**self._env(), "RAY_AUTH_TOKEN": self.settings["RAY_AUTH_TOKEN"]}
        return subprocess.run([tuner_command(), *args], env=env, capture_output=True, text=True, timeout=timeout)

    def in_head(self, *command: str) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", "ray-head", *command, check=False, timeout=120)

    def submit(self, spec: Path, *options: str) -> tuple[str, str, dict[str, Any]]:
        """``tuner submit`` then ``tuner logs --follow`` to the end: the job id, its output, its JSON summary."""
        done = self.tuner("submit", str(spec), "--address", self.dashboard, *options)
        assert done.returncode == 0, done.stderr
        job = done.stdout.strip()
        assert job.startswith("raysubmit_"), done.stdout
        return (job, *self.follow(job))

    def follow(self, job: str) -> tuple[str, dict[str, Any]]:
        followed = self.tuner("logs", job, "--address", self.dashboard, "--follow")
        logs = followed.stdout
        status = self.tuner("status", job, "--address", self.dashboard).stdout.strip()
        assert status == "SUCCEEDED", logs[-4000:]
        assert "INFO" not in followed.stderr, followed.stderr  # Ray's client logs the log stream's end
        return logs, json.loads(logs.strip().splitlines()[-1])

    def client(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        """MLflow's client on the host, logged in as the admin."""
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", self.settings["MLFLOW_ADMIN_PASSWORD"])
        return MlflowClient(tracking_uri=self.mlflow)

    def optuna_trials(self, study: str) -> list[dict[str, Any]]:
        """The study's trials as Optuna's own CLI lists them on the head (OPTUNA_STORAGE names the storage)."""
        done = self.in_head("optuna", "trials", "--study-name", study, "-f", "json")
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    @property
    def ports(self) -> set[int]:
        return {int(self.settings[k]) for k in PORTS}

    def publishers(self) -> list[dict[str, Any]]:
        """The ports each container publishes, as ``docker compose ps`` reports them."""
        out = self.compose("ps", "--format", "json").stdout.strip()
        rows = json.loads(out) if out.startswith("[") else [json.loads(line) for line in out.splitlines()]
        return [p for row in rows for p in row.get("Publishers") or ()]

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()


def listeners(port: int) -> set[str]:
    """The addresses listening on TCP ``port`` on this machine, as /proc/net/tcp and tcp6 write them (hex)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def is_loopback(address: str) -> bool:
    # /proc's hex is in host byte order: 0100007F is 127.0.0.1, the IPv6 loopback ends in 1 after zeros.
    return address.endswith("7F") or address == "00000000000000000000000001000000"


def timing(request: pytest.FixtureRequest, line: str) -> None:
    request.config.stash[TIMINGS].append(line)


class Build:
    """The README's deploy steps up to the image: copy .env.example, fill in the secrets it names, build the
    image (``docker compose build``). In a thread, started as the session starts (conftest's
    ``pytest_collection_finish``), so that the build's minutes of downloads pass while other tests run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stack: Stack | None = None
        self.error: BaseException | None = None
        self.report = ""
        self._thread = threading.Thread(target=self._run, name="deploy-build", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            # Its own image name: a deployment's tuner:cpu on the same engine is left alone.
            settings = {name: secrets.token_hex(16) for name in example_secrets()} | {"TUNER_IMAGE": "tuner-test:cpu"}
            settings.update(base_images())
            text = (DOCKER / ".env.example").read_text()
            for name, value in settings.items():
                filled = f"\n{name}={value}\n"
                text = text.replace(f"\n{name}=\n", filled) if f"\n{name}=\n" in text else f"{text}{filled[1:]}"
            env_file = write(self.directory / ".env", text)
            made = Stack(f"tuner-test-{secrets.token_hex(3)}", env_file, settings)
            # Its layers, not its id, tell a rebuild from a reuse: compose labels the image with the project's name.
            layers = ["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", settings["TUNER_IMAGE"]]
            old = subprocess.run(layers, capture_output=True, text=True)
            started = time.monotonic()
            made.compose("build", timeout=1800)
            built = time.monotonic() - started
            new = subprocess.run(layers, capture_output=True, text=True)
            reused = "reused from the last build" if old.stdout == new.stdout else "built"
            self.report = f"deploy: image {settings['TUNER_IMAGE']} {reused} in {built:.0f} s"
            self.stack = made
        except BaseException as exc:  # handed to the fixture, in the test's thread
            self.error = exc

    def result(self) -> tuple[Stack, float]:
        """The stack, its image built; and how long the fixture waited for the build."""
        started = time.monotonic()
        self._thread.join(timeout=2400)
        assert not self._thread.is_alive(), "the image's build did not end in 40 minutes"
        if self.error is not None:
            raise self.error
        assert self.stack is not None
        return self.stack, time.monotonic() - started


#: The build started as the session starts, when the session runs a test of the stack.
EARLY_BUILD = pytest.StashKey[Build]()


def start_early_build(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the image's build now if a selected test needs the stack and a Docker engine answers."""
    if any("stack" in getattr(item, "fixturenames", ()) for item in items) and docker_missing() is None:
        config.stash[EARLY_BUILD] = Build(Path(tempfile.mkdtemp(prefix="tuner-deploy-")))


@pytest.fixture(scope="module")
def stack(docker: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The README's deploy steps (:class:`Build`), then the stack started with two workers
    (``up -d --build --wait --scale ray-worker=2``); down with its volumes at the end."""
    build = request.config.stash.get(EARLY_BUILD, None) or Build(tmp_path_factory.mktemp("deploy"))
    try:
        made, waited = build.result()
    except BaseException:
        shutil.rmtree(build.directory, ignore_errors=True)  # its env file holds the secrets
        raise
    timing(request, f"{build.report} (started with the session; the tests waited {waited:.0f} s for it)")
    settings, env_file = made.settings, made.env_file
    try:
        # Free ports, chosen now rather than before a build that may take minutes.
        ports = {k: str(free_port()) for k in PORTS}
        settings.update(ports)
        with env_file.open("a") as out:
            out.writelines(f"{k}={v}\n" for k, v in ports.items())
        started = time.monotonic()
        made.compose("up", "-d", "--build", "--wait", "--scale", "ray-worker=2", timeout=600)
        timing(request, f"deploy: stack started (up --wait, 2 workers) in {time.monotonic() - started:.0f} s")
        yield made
    finally:
        made.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        shutil.rmtree(build.directory, ignore_errors=True)  # its env file holds the secrets


SPEC = ROOT / "search_spaces" / "optimizers.yaml"
FIRST = ("--trials", "6", "--epochs", "3", "--name", "deploy-digits")


@pytest.mark.timeout(1200, func_only=True)  # the stack's build and start have timeouts of their own
def test_the_readme_deploy_runs_a_submitted_study_to_the_end(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    started = time.monotonic()
    job, logs, summary = stack.submit(SPEC, *FIRST)
    timing(request, f"deploy: study of 6 trials x 3 epochs in {time.monotonic() - started:.0f} s (submit to end)")
    stack.studies["deploy-digits"] = [job]
    assert sum(summary["trials"].values()) == 6
    # Optuna's study is in PostgreSQL, not in SQLite on the shared volume.
    assert summary["storage"].startswith("postgresql+psycopg://") and "@postgres:5432/optuna" in summary["storage"]
    assert len(stack.optuna_trials("deploy-digits")) == 6
    assert stack.in_head("test", "-e", "/shared/runs/optuna.db").returncode == 1
    # An init process reaps what Ray's jobs leave behind (compose's init: true).
    assert stack.in_head("cat", "/proc/1/comm").stdout.strip() == "docker-init"
    # The link printed on the cluster opens in a browser here.
    experiment, parent = summary["mlflow"]["experiment_id"], summary["mlflow"]["parent_run_id"]
    assert f"open: {stack.mlflow}/#/experiments/{experiment}/runs/{parent}?" in logs

    client = stack.client(monkeypatch)
    runs = client.search_runs([experiment])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent]
    assert [r.info.run_id for r in parents] == [parent] and len(children) == 6 and len(runs) == 7
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)  # none RUNNING, none FAILED
    assert len({r.data.tags["ray.node_id"] for r in children}) >= 2
    names = {a.path for a in client.list_artifacts(parent)}
    assert {"loss_curves.png", "trials.csv", "best_model", "spec.yaml"} <= names
    rows = Path(client.download_artifacts(parent, "trials.csv", str(stack.env_file.parent))).read_text().splitlines()
    assert len(rows) == 1 + 6

    # Without credentials: 401 from MLflow, and from Ray's job API without the token.
    assert (
        requests.get(f"{stack.mlflow}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10).status_code == 401
    )
    assert requests.get(f"{stack.dashboard}/api/jobs/", timeout=10).status_code == 401


def test_nothing_in_the_stack_listens_beyond_loopback(stack: Stack) -> None:
    published = [p for p in stack.publishers() if p["PublishedPort"]]
    assert {p["PublishedPort"] for p in published} == stack.ports
    assert {p["URL"] for p in published} == {"127.0.0.1"}
    for port in stack.ports:  # what the host really listens on: Docker's proxy, on loopback only
        assert listeners(port) and all(is_loopback(a) for a in listeners(port)), (port, listeners(port))


def test_the_ray_client_port_takes_only_clients_with_the_token(stack: Stack) -> None:
    port = stack.settings["RAY_CLIENT_HOST_PORT"]
    code = f"import ray; ray.init('ray://127.0.0.1:{port}'); print(int(ray.cluster_resources()['CPU']))"
    env = stack._env()  # no RAY_AUTH_* at all
    # Refused: the server drops the connection, which Ray's client reports, after its retries, as a timeout
    # (retries that start at 1 s rather than 5 s: about 7 s in all, not 30).
    refusing = {**env, "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1"}
    refused = subprocess.run([sys.executable, "-c", code], env=refusing, capture_output=True, text=True, timeout=180)
    assert refused.returncode != 0 and "ConnectionError" in refused.stderr, refused.stderr[-2000:]
    # Taken with the token (so the refusal was the token's doing, not a closed port). Ray Client then also
    # wants the same Ray version here as in the image; a mismatch is reported only past authentication.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=stack.settings["RAY_AUTH_TOKEN"])
    taken = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    logs = stack.in_head("sh", "-c", "tail -n 40 /tmp/ray/session_latest/logs/ray_client_server*.err").stdout
    if "Version mismatch" not in taken.stderr:
        assert taken.returncode == 0 and int(taken.stdout.split()[-1]) >= 5, taken.stderr[-2000:] + logs  # 1 + 2 x 2


#: A Ray job's states once it has ended.
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.mark.timeout(1800)
def test_a_killed_worker_container_loses_no_trial(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    epochs = 60
    spec = write(
        tmp_path / "long.yaml",
        # The trial must still be training seconds after MLflow shows it has begun (its metrics arrive every 2 s):
        # 24,000 rows in batches of 16 take about 0.3 s an epoch on one core (digits' 1,437 take 0.02 s, and a
        # whole trial was over between two looks), so a trial trains for 20 s or more.
        f"study: {{name: deploy-workerloss, trials: 4}}\n"
        "data: {dataset: synthetic, n_samples: 30000, n_features: 64}\n"
        f"training: {{epochs: {epochs}, batch_size: 16, checkpoint_every: 1}}\n"
        "pruning: {scheduler: none}\n"
        "optimizers:\n  adam: {learning_rate: {low: 1.0e-3, high: 3.0e-3}}\n",
    )
    done = stack.tuner("submit", str(spec), "--address", stack.dashboard)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    client = stack.client(monkeypatch)
    workers = {
        subprocess.run(
            ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c],
            capture_output=True, text=True, check=True,
        ).stdout.strip(): c
        for c in stack.containers("ray-worker")
    }  # fmt: skip
    # Wait for a trial that runs on a worker container and has trained a few epochs, but not half of them (so
    # that it is still training when the container dies), then kill that container. A running trial's run is
    # tagged with its node as its metrics arrive.
    victim, run_id, node = None, None, None
    deadline = time.monotonic() + 600
    looks = 0
    while victim is None and time.monotonic() < deadline:
        time.sleep(1)
        looks += 1
        if looks % 15 == 0 and stack.tuner("status", job, "--address", stack.dashboard).stdout.strip() in ENDED:
            break  # over before a trial was seen mid-way: the assertion below says how it ended
        experiment = client.get_experiment_by_name("deploy-workerloss")
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
            ip = run.data.tags.get("ray.node_ip")
            if ip in workers and 3 <= len(client.get_metric_history(run.info.run_id, "val_loss")) <= epochs // 2:
                victim, run_id, node = workers[ip], run.info.run_id, run.data.tags["ray.node_id"]
                break
    if victim is None:
        status = stack.tuner("status", job, "--address", stack.dashboard).stdout.strip()
        logs = stack.tuner("logs", job, "--address", stack.dashboard).stdout
        pytest.fail(f"no trial was seen training on a worker container; the job is {status}:\n{logs[-3000:]}")
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    killed = time.monotonic()
    logs, summary = stack.follow(job)
    timing(request, f"deploy: after docker kill of a worker, the study ended {time.monotonic() - killed:.0f} s later")

    assert summary["trials"] == {"complete": 4, "pruned": 0, "failed": 0}, logs[-3000:]
    trials = stack.optuna_trials("deploy-workerloss")
    assert len(trials) == 4 and {t["state"] for t in trials} == {"COMPLETE"}
    runs = client.search_runs(
        [summary["mlflow"]["experiment_id"]], f"tags.`{PARENT_TAG}` = '{summary['mlflow']['parent_run_id']}'"
    )
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    moved = client.get_run(run_id)
    resumed = moved.data.tags.get("resumed_from_epoch")
    assert resumed and int(resumed) >= 1, f"the killed trial was not resumed from a checkpoint: {moved.data.tags}"
    assert moved.data.tags["ray.node_id"] != node  # it ended on another Ray node
    for run in runs:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == list(
            range(1, epochs + 1)
        )


@pytest.mark.timeout(1800)
def test_the_stack_restarts_with_its_studies_and_runs(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    assert "deploy-digits" in stack.studies, (
        "needs the study of test_the_readme_deploy_runs_a_submitted_study_to_the_end"
    )
    client = stack.client(monkeypatch)
    experiment = client.get_experiment_by_name("deploy-digits").experiment_id
    before = {r.info.run_id for r in client.search_runs([experiment])}
    started = time.monotonic()
    stack.compose("down", timeout=300)  # volumes kept
    stack.compose("up", "-d", "--wait", "--scale", "ray-worker=2", timeout=600)
    timing(request, f"deploy: down and up again (volumes kept) in {time.monotonic() - started:.0f} s")
    assert {r.info.run_id for r in client.search_runs([experiment])} == before
    assert len(stack.optuna_trials("deploy-digits")) == 6
    parent = next(r for r in client.search_runs([experiment]) if PARENT_TAG not in r.data.tags).info.run_id
    assert "loss_curves.png" in {a.path for a in client.list_artifacts(parent)}

    # The same study again, smaller: more trials in the same Optuna study and MLflow experiment.
    _, _, summary = stack.submit(SPEC, "--trials", "2", "--epochs", "1", "--name", "deploy-digits")
    trials = stack.optuna_trials("deploy-digits")
    assert len(trials) == 8 and sorted(t["number"] for t in trials) == list(range(8))
    runs = client.search_runs([experiment])
    assert summary["mlflow"]["experiment_id"] == experiment and len(runs) == 7 + 3
    assert len([r for r in runs if PARENT_TAG not in r.data.tags]) == 2


def test_down_with_volumes_leaves_nothing(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", timeout=300)
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in ("container", "volume", "network"):
        every = ["-a"] if kind == "container" else []
        listed = subprocess.run(
            ["docker", kind, "ls", "-q", *every, "--filter", label], capture_output=True, text=True, check=True
        ).stdout
        assert listed.strip() == "", f"{kind}s left: {listed}"
    assert all(listeners(port) == set() for port in stack.ports)


def test_compose_refuses_to_start_without_a_secret_naming_it(docker: None, tmp_path: Path) -> None:
    """Each secret left empty: compose stops before any container, with one line naming the variable."""
    for missing in example_secrets():
        filled = {name: "x" * 16 for name in example_secrets() if name != missing}
        text = "".join(f"{name}={value}\n" for name, value in filled.items()) + f"{missing}=\n"
        env_file = write(tmp_path / f"{missing}.env", text)
        env = {k: v for k, v in os.environ.items() if k not in filled and k != missing}
        done = subprocess.run(
            ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"{missing} is missing a value: set {missing} in docker/.env" in done.stderr


def has_gpu() -> bool:
    return bool(shutil.which("nvidia-smi")) and subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0


@pytest.mark.gpu
@pytest.mark.timeout(3600)
def test_the_gpu_image_builds_with_tensorflows_cuda_libraries(docker: None, tmp_path: Path) -> None:
    """The GPU image through compose.gpu.yaml: TensorFlow built with CUDA and its CUDA libraries installed; on a
    machine with a GPU, a worker container that sees it. Too long for every run (7 minutes and 7.8 GB here, on
    2 cores), so it runs where a GPU is, or when asked."""
    if not has_gpu() and not os.environ.get("TUNER_TEST_GPU_BUILD"):
        pytest.skip("no NVIDIA GPU here (nvidia-smi); TUNER_TEST_GPU_BUILD=1 builds the GPU image anyway")
    settings = {name: "x" * 16 for name in example_secrets()} | base_images()
    env_file = write(tmp_path / ".env", "".join(f"{k}={v}\n" for k, v in settings.items()))
    files = ["-f", str(COMPOSE), "-f", str(DOCKER / "compose.gpu.yaml")]
    env = {k: v for k, v in os.environ.items() if k not in settings}
    done = subprocess.run(
        ["docker", "compose", "--env-file", str(env_file), *files, "build"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check = (
        "import importlib.metadata as m, tensorflow as tf; print(tf.test.is_built_with_cuda(), "
        "m.version('nvidia-cudnn-cu12'), len(tf.config.list_physical_devices('GPU')))"
    )
    gpus = ["--gpus", "all"] if has_gpu() else []
    ran = subprocess.run(
        ["docker", "run", "--rm", *gpus, "tuner:gpu", "python", "-c", check], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    built_with_cuda, cudnn, seen = ran.stdout.split()
    assert built_with_cuda == "True" and cudnn
    if gpus:
        assert int(seen) >= 1
