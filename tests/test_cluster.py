"""tuner on a real multi-node Ray cluster on 127.0.0.1, started with docker/ray-node.sh as the containers
start it (token authentication on), with a real `mlflow server`: trials on both nodes, a node lost mid-study,
a study submitted as a Ray job, and fractional GPUs through Ray's resource accounting."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .conftest import ROOT, free_port, tuner_command, write

NODE_SCRIPT = ROOT / "docker" / "ray-node.sh"


@dataclass
class Cluster:
    address: str
    dashboard: str
    env: dict[str, str]
    temp: str
    workers: list[int] = field(default_factory=list)  # raylet pids of the worker nodes, oldest first

    def add_worker(self, cpus: int = 1) -> int:
        """Start a worker node as the compose file's ray-worker does; returns its raylet's pid."""
        before = set(_raylets(self.temp))
        # Its own temporary directory, as a container has: nodes sharing one would garbage-collect each
        # other's runtime environments (a job's working directory among them).
        env = {
            **self.env,
            "RAY_HEAD_ADDRESS": self.address,
            "RAY_NUM_CPUS": str(cpus),
            "RAY_AGENT_PORT": str(free_port()),
        }
        env["RAY_TEMP_DIR"] = f"{self.temp}w{len(self.workers)}"
        subprocess.run(["bash", str(NODE_SCRIPT), "worker"], env=env, check=True, capture_output=True, timeout=120)
        (pid,) = set(_raylets(self.temp)) - before
        self.workers.append(pid)
        return pid

    def remove_node(self, raylet: int) -> None:
        """Kill a node: its raylet and everything it started (the trial's worker process among them)."""
        for pid in [*_descendants(raylet), raylet]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _raylets(temp: str) -> list[int]:
    return [pid for pid in _pids() if "raylet/raylet" in _cmdline(pid) and temp in _cmdline(pid)]


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head (1 CPU, resource "head") and one worker node (1 CPU, resource "worker"), token auth on."""
    temp = tempfile.mkdtemp(prefix="trc", dir="/tmp")  # Ray's socket paths must stay short
    gcs, dashboard, client = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_NODE_IP": "127.0.0.1",
        "RAY_PORT": str(gcs),
        "RAY_DASHBOARD_PORT": str(dashboard),
        "RAY_CLIENT_PORT": str(client),
        # The head's agent runs the submitted jobs: a port of its own, not Ray's 52365, which any other Ray on
        # this machine (a launch's local one) may hold; Ray then logs the clash and refuses every job.
        "RAY_AGENT_PORT": str(free_port()),
        "RAY_NUM_CPUS": "1",
        "RAY_TEMP_DIR": temp,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    env.pop("RAY_ADDRESS", None)
    subprocess.run(["bash", str(NODE_SCRIPT), "head"], env=env, check=True, capture_output=True, timeout=120)
    made = Cluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env, temp)
    try:
        made.add_worker()
        yield made
    finally:
        for pid in _pids():
            if temp in _cmdline(pid):
                for child in [*_descendants(pid), pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)


def launch(cluster: Cluster, spec: Path, workdir: Path, *options: str, **popen: Any) -> subprocess.Popen:
    args = [tuner_command(), "launch", str(spec), "--json", "--workdir", str(workdir), "--address", cluster.address]
    return subprocess.Popen([*args, *options], env=cluster.env, text=True, **popen)


def children(summary: dict[str, Any]) -> list[Any]:
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    return client.search_runs([summary["mlflow"]["experiment_id"]], "tags.`mlflow.parentRunId` != ''")


def test_node_script_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    done = subprocess.run(["bash", str(NODE_SCRIPT), "head"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "RAY_AUTH_TOKEN is not set" in done.stderr


def test_trials_run_on_both_nodes(cluster: Cluster, mlflow_server: str, tmp_path: Path) -> None:
    spec = ROOT / "search_spaces" / "optimizers.yaml"
    proc = launch(
        cluster, spec, tmp_path, "--trials", "6", "--epochs", "3", "--tracking-uri", mlflow_server,
        "--name", "both-nodes", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert sum(summary["trials"].values()) == 6
    runs = children(summary)
    assert len(runs) == 6 and all(r.info.status != "RUNNING" for r in runs)
    assert len({r.data.tags["ray.node_id"] for r in runs}) == 2  # the head's CPU and the worker's


def test_a_trial_whose_node_dies_resumes_elsewhere_from_its_checkpoint(cluster: Cluster, tmp_path: Path) -> None:
    doomed = cluster.add_worker()
    spec = write(
        tmp_path / "slow.yaml",
        "study: {name: nodeloss, trials: 3, concurrency: 3}\ntraining: {epochs: 150, checkpoint_every: 1}\n"
        "pruning: {scheduler: none}\n"
        "optimizers:\n  adam: {learning_rate: {low: 1.0e-3, high: 3.0e-3}}\n",
    )
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        proc = launch(cluster, spec, tmp_path, stdout=sink, stderr=subprocess.STDOUT)
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        deadline = time.monotonic() + 240
        # Wait until every node is training (each trial has reported epochs), then take one node away.
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                running = [t for t in optuna.load_study(study_name="nodeloss", storage=storage).trials
                           if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 5]  # fmt: skip
            except (KeyError, Exception):
                continue
            if len(running) >= 3:
                break
        cluster.remove_node(doomed)
        proc.wait(timeout=600)
    assert proc.returncode == 0, out.read_text()[-3000:]
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    trials = optuna.load_study(study_name="nodeloss", storage=storage).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(sorted(t.intermediate_values) == list(range(1, 151)) for t in trials)
    runs = children(summary)
    moved = [r for r in runs if "resumed_from_epoch" in r.data.tags]
    assert moved, "the trial on the lost node was not restarted from a checkpoint"
    assert all(int(r.data.tags["resumed_from_epoch"]) >= 1 for r in moved)  # not re-trained from epoch 0
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == list(range(1, 151))


def test_a_study_submitted_as_a_ray_job_runs_to_completion(cluster: Cluster, tmp_path: Path) -> None:
    spec = ROOT / "search_spaces" / "adam.yaml"
    workdir = tmp_path / "on-the-head"
    args = [str(spec), "--address", cluster.dashboard, "--trials", "2", "--epochs", "2", "--workdir", str(workdir)]
    # The user exports the token alone, as the README says (Ray's own client also wants RAY_AUTH_MODE=token).
    client_env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run([tuner_command(), "submit", *args], env=client_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr  # Ray's client logs its package upload; tuner keeps that off the terminal
    job = done.stdout.strip()
    assert job.startswith("raysubmit_")
    status = ""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        status = subprocess.run(
            [tuner_command(), "status", job, "--address", cluster.dashboard],
            env=client_env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = subprocess.run(
        [tuner_command(), "logs", job, "--address", cluster.dashboard], env=client_env, capture_output=True, text=True
    ).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    summary = json.loads(logs.strip().splitlines()[-1])
    assert summary["study"] == "adam-digits" and summary["trials"]["complete"] == 2
    assert (workdir / "optuna.db").is_file()
    listed = subprocess.run(
        [tuner_command(), "status", "--address", cluster.dashboard], env=client_env, capture_output=True, text=True
    ).stdout
    assert f"{job}  SUCCEEDED  adam-digits" in listed


GPU_SCRIPT = """
import json, os, sys
import ray
from tuner import run_study
from tuner.spec import parse_spec
from tuner.trainable import train_trial

out = sys.argv[1]

def on_a_gpu(config, data, **options):
    # This machine has no GPU: Ray's accounting hands out GPU 0 all the same. TensorFlow is given a fake
    # GPU list so that the worker's memory-growth call can be seen.
    import time
    with open(os.path.join(out, f"trial-{config['trial_number']}.json"), "w") as f:
        json.dump({"gpus": ray.get_gpu_ids(), "start": time.time()}, f)
    import tensorflow as tf
    calls = []
    real = tf.config.list_physical_devices
    tf.config.list_physical_devices = lambda kind=None: ["GPU:0"] if kind == "GPU" else real(kind)
    tf.config.experimental.set_memory_growth = lambda device, enable: calls.append((device, enable))
    train_trial(config, data, **options)
    with open(os.path.join(out, f"trial-{config['trial_number']}.json"), "r+") as f:
        record = json.load(f)
        record.update(end=time.time(), memory_growth=calls)
        f.seek(0)
        json.dump(record, f)

# More CPUs than four trials take: only the GPU's accounting holds the fifth trial back.
ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
spec = parse_spec({
    "study": {"name": "gpu", "trials": 5},
    "training": {"epochs": 10},
    "pruning": {"scheduler": "none"},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0.25},
    "optimizers": {"adam": {}},
})
seen = []
result = run_study(spec, workdir=out, trainable=on_a_gpu, announce=seen.append)
print(json.dumps({"concurrency": seen[0].concurrency, "counts": result.counts()}))
"""


def test_fractional_gpus_share_a_gpu_four_at_a_time(tmp_path: Path) -> None:
    """Ray's resource accounting on a CPU machine (ray.init(num_gpus=1), with CPUs for eight trials):
    gpus_per_trial 0.25 puts four trials, not five, on GPU 0 at once, and each worker turns on TensorFlow's
    memory growth (seen on a fake GPU)."""
    done = subprocess.run(
        [sys.executable, "-c", GPU_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["concurrency"] == 4 and summary["counts"]["complete"] == 5
    records = [json.loads(p.read_text()) for p in tmp_path.glob("trial-*.json")]
    assert len(records) == 5
    assert all(r["gpus"] == [0] for r in records)
    assert all(r["memory_growth"] == [["GPU:0", True]] for r in records)
    # At some moment four trials held their quarter of GPU 0 together, and never more.
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    level, peak = 0, 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    assert peak == 4
