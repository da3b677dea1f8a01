"""``tuner up`` and ``tuner down``: a real Ray head and a real MLflow server left running for a work directory,
which a real ``tuner launch`` there uses without a flag."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import tuner_command, write
from tuner import service
from tuner.runner import LAUNCH


def tuner(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tuner_command(), *args], capture_output=True, text=True, timeout=timeout)


def listening(port: int) -> set[str]:
    """The local addresses a TCP port is listened on (``/proc/net/tcp`` and ``tcp6``), as hex."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").partition("=")[::2] for e in entries if e)


def refused_without_token(address: str) -> bool:
    """Whether Ray refuses a driver that connects to ``address`` without the token: Ray retries for about 20 s
    before it gives up, so the probe is stopped at the first refusal it logs (or a connection it makes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    code = f"import ray; ray.init(address={address!r}, log_to_driver=False); print('connected', flush=True)"
    probe = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = threading.Timer(90, probe.kill)  # neither line within 90 s: not refused as it should be
    deadline.start()
    try:
        for line in probe.stdout or ():
            if "InvalidAuthToken" in line:
                return True
            if line.startswith("connected"):
                return False
        return False
    finally:
        deadline.cancel()
        probe.kill()
        probe.wait()


def test_up_serves_the_launches_of_its_work_directory_and_down_stops_it(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    up = tuner("up", "--workdir", str(workdir))
    assert up.returncode == 0, up.stderr
    served = service.find(workdir)
    assert served is not None and f"mlflow: {served.mlflow_url}" in up.stdout
    try:
        # Kept safe: Ray's token auth on, its token readable by its owner alone; MLflow on 127.0.0.1 alone.
        assert stat.S_IMODE(os.stat(served.token_path).st_mode) == 0o600
        gcs = [p for p in service._strays(served.temp_dir) if "gcs_server" in Path(f"/proc/{p}/cmdline").read_text()]
        assert gcs and environment(gcs[0])["RAY_AUTH_MODE"] == "token"
        assert listening(int(served.mlflow_url.rsplit(":", 1)[1])) == {"0100007F"}  # 127.0.0.1
        assert refused_without_token(served.ray_address)

        again = tuner("up", "--workdir", str(workdir))
        assert again.returncode == 0 and again.stdout.startswith("already up") and service.find(workdir) == served

        # A launch there runs on the service's Ray (one more driver in its session) and records through its
        # MLflow server, into the work directory's own store.
        logs = Path(served.temp_dir, "session_latest", "logs")
        drivers = len(list(logs.glob("python-core-driver-*")))
        spec = write(tmp_path / "iris.yaml", SPEC)
        launch = tuner("launch", str(spec), "--workdir", str(workdir), "--json")
        assert launch.returncode == 0, launch.stderr
        summary = json.loads(launch.stdout.strip().splitlines()[-1])
        assert summary["mlflow"]["tracking_uri"] == served.mlflow_url
        assert f"open: {served.mlflow_url}/#/experiments/" in launch.stdout
        assert len(list(logs.glob("python-core-driver-*"))) == drivers + 1
        client = MlflowClient(service.store_uri(workdir))
        runs = client.search_runs([summary["mlflow"]["experiment_id"]])
        assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # the parent and its 2 trials
        assert all(r.data.metrics.get("val_loss") is not None for r in runs if r.data.tags.get("mlflow.parentRunId"))
        # Its artifacts where a launch without the service puts them, which either kind of launch can log to.
        experiment = client.get_experiment(summary["mlflow"]["experiment_id"])
        assert experiment.artifact_location == (workdir / "mlartifacts" / "served").as_uri()
        assert list((workdir / "mlartifacts" / "served").rglob("iris.yaml"))  # the spec, on the parent run
        # The launch records the store, not the server: `tuner resume` finds its runs with the service down too.
        import optuna

        study = optuna.load_study(study_name="served", storage=f"sqlite:///{workdir / 'optuna.db'}")
        (info,) = [v for k, v in study.user_attrs.items() if k.startswith(LAUNCH)]
        assert info["mlflow"]["tracking_uri"] == service.store_uri(workdir)

        ui = tuner("ui", "--workdir", str(workdir), timeout=60)
        assert ui.returncode == 0 and f"served: {served.mlflow_url}/#/experiments/" in ui.stdout

        # A service whose Ray died is not used; down stops what is left of it.
        os.killpg(served.ray_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while service.find(workdir) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert service.find(workdir) is None
    finally:
        down = tuner("down", "--workdir", str(workdir))
    assert down.returncode == 0 and down.stdout.startswith("stopped the service"), down.stderr
    assert not service._group_alive(served.mlflow_pid) and not service._group_alive(served.ray_pid)
    assert not service._strays(served.temp_dir) and not Path(served.temp_dir).exists()
    assert not (workdir / ".tuner" / "service.json").exists() and not Path(served.token_path).exists()
    assert tuner("down", "--workdir", str(workdir)).stdout.startswith("no service is up")

    # With the service down, a launch there runs cold on the same stores: into the experiment the service
    # made, whose artifacts it can write, as a cold launch's own.
    cold = tuner("launch", str(spec), "--workdir", str(workdir), "--json", "--trials", "1")
    assert cold.returncode == 0, cold.stderr
    after = json.loads(cold.stdout.strip().splitlines()[-1])
    assert after["mlflow"]["tracking_uri"] == service.store_uri(workdir)
    assert after["mlflow"]["experiment_id"] == summary["mlflow"]["experiment_id"]
    runs = MlflowClient(service.store_uri(workdir)).search_runs([after["mlflow"]["experiment_id"]])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5  # the two launches' parents and 3 trials
    assert len(list((workdir / "mlartifacts" / "served").rglob("iris.yaml"))) == 2


SPEC = """
study: {name: served, trials: 2, seed: 0}
data: {dataset: iris}
training: {epochs: 2}
optimizers:
  adam: {learning_rate: {low: 1.0e-3, high: 1.0e-1, log: true}}
"""


def test_a_missing_unreadable_or_dead_service_is_not_used(tmp_path: Path) -> None:
    assert service.find(tmp_path) is None  # none recorded
    record = tmp_path / ".tuner" / "service.json"
    write(record, "{not json")
    assert service.find(tmp_path) is None
    dead = subprocess.Popen(["true"])
    dead.wait()
    fields = {"ray_address": "127.0.0.1:1", "token_path": str(tmp_path / "t"), "mlflow_url": "http://127.0.0.1:1"}
    fields |= {"store": service.store_uri(tmp_path), "ray_pid": dead.pid, "mlflow_pid": dead.pid}
    fields["temp_dir"] = f"{service.TEMP_PREFIX}gone-{tmp_path.name}"
    # A record stop() would act on wrongly is no record: pid 0 is the caller's own group, "" matches every
    # command line, "/" is a directory to delete.
    for damaged in ({"ray_pid": 0}, {"mlflow_pid": 1}, {"temp_dir": ""}, {"temp_dir": "/"}, {"temp_dir": "/tmp/x"}):
        record.write_text(json.dumps(fields | damaged))
        assert service._read(tmp_path) is None, damaged
    record.write_text(json.dumps(fields))
    assert service._read(tmp_path) == service.Service(**fields)  # readable, but its processes are gone
    assert service.find(tmp_path) is None
    assert service.stop(tmp_path) is not None and not record.exists()  # down clears what it left
