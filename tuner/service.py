"""A warm local service (``tuner up``): a Ray head and an MLflow server that stay up between launches.

A cold launch starts a local Ray and opens the MLflow store itself, seconds of fixed cost each time. While a
service is up in a work directory, launches there connect to its Ray head and send their records to its
MLflow server, which serves the work directory's own store (``WORKDIR/mlflow.db``, artifacts in
``WORKDIR/mlartifacts``): the same records a cold launch writes, in the same place.

What runs, and how it is kept safe:
- a Ray head (``ray start --head --block``) with token authentication on; the token is a file in the work
  directory only its owner reads. Ray binds its servers to every address of the machine whatever it is told
  (it turns 127.0.0.1 into the machine's address), so the token is what keeps others out;
- ``mlflow server`` bound to 127.0.0.1.

Each runs in a process group of its own, recorded in ``WORKDIR/.tuner/service.json``; ``tuner down`` stops
the groups. This module imports neither Ray nor MLflow: both run as commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tuner.errors import TunerError

__all__ = ["Service", "auth_environment", "find", "mlflow_server_command", "start", "stop", "store_uri"]

#: Where a work directory's service keeps its record, token and logs.
SERVICE_DIR = ".tuner"
#: How long ``tuner up`` waits for each server to answer.
START_PATIENCE = 120.0
#: How long ``tuner down`` waits for the processes to end after SIGTERM, before SIGKILL.
STOP_PATIENCE = 20.0


def store_uri(workdir: Path) -> str:
    """The work directory's own MLflow store, which launches write to unless told otherwise."""
    return f"sqlite:///{workdir / 'mlflow.db'}"


def mlflow_server_command(uri: str, artifacts: Path, *, host: str, port: int) -> list[str]:
    """``mlflow server`` on the store at ``uri``, serving artifacts from ``artifacts``: one worker (a study's
    records are a trickle), bound to ``host``."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--artifacts-destination", str(artifacts),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


#: MLflow's background job runner serves GenAI features a study does not use; it costs a process each.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class Service:
    """A running service, as ``WORKDIR/.tuner/service.json`` records it.

    Attributes:
        ray_address: the Ray head's GCS address (``127.0.0.1:PORT``), for ``ray.init``.
        token_path: the file holding Ray's token (``RAY_AUTH_TOKEN_PATH``).
        mlflow_url: the MLflow server (``http://127.0.0.1:PORT``).
        store: the MLflow store it serves (``sqlite:///WORKDIR/mlflow.db``).
        ray_pid, mlflow_pid: the leaders of the two process groups.
        temp_dir: Ray's session files (and sockets) for this head alone.
    """

    ray_address: str
    token_path: str
    mlflow_url: str
    store: str
    ray_pid: int
    mlflow_pid: int
    temp_dir: str

    def url_for(self, store: str) -> str:
        """Where records for the MLflow ``store`` go: this service's server when it serves that store (it
        holds the store open, and a launch skips opening it), else the store itself."""
        return self.mlflow_url if store == self.store else store


def _record(workdir: Path) -> Path:
    return workdir / SERVICE_DIR / "service.json"


#: Where a service's Ray keeps its session files: ``tempfile.mkdtemp`` under /tmp, one per service.
TEMP_PREFIX = "/tmp/tuner-"


def _read(workdir: Path) -> Service | None:
    """The record, if it is one ``start`` could have written: ``stop`` signals its processes and deletes its
    directory, so a damaged or foreign record must not name the caller's group, every process or ``/``."""
    try:
        found = Service(**json.loads(_record(workdir).read_text()))
        int(found.ray_address.rpartition(":")[2]), int(found.mlflow_url.rpartition(":")[2])
    except (OSError, ValueError, TypeError):
        return None
    pids = (found.ray_pid, found.mlflow_pid)
    if not all(isinstance(p, int) and p > 1 for p in pids):
        return None
    if not (found.temp_dir.startswith(TEMP_PREFIX) and "/" not in found.temp_dir[len(TEMP_PREFIX) :]):
        return None
    return found


def find(workdir: str | Path) -> Service | None:
    """The service up in ``workdir``, or None when none is recorded or it no longer runs."""
    found = _read(Path(workdir).resolve())
    if found is None:
        return None
    alive = _alive(found.ray_pid) and _alive(found.mlflow_pid)
    host, _, port = found.ray_address.rpartition(":")
    if alive and _answers(host, int(port)) and _answers("127.0.0.1", int(found.mlflow_url.rsplit(":", 1)[1])):
        return found
    return None


def auth_environment(service: Service) -> dict[str, str]:
    """What a process connecting to the service's Ray needs in its environment before it imports Ray (Ray
    reads its authentication settings once, at import)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": service.token_path}


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One ``tuner up`` or ``tuner down`` at a time in a work directory: two at once would stop each other's
    half-started processes. The system drops the lock if the process dies."""
    import fcntl

    folder = root / SERVICE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "service.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def start(workdir: str | Path, *, num_cpus: int | None = None) -> tuple[Service, bool]:
    """Start the service in ``workdir``, or find the one already up there; returns it, and whether it was
    started now.

    Raises:
        TunerError: a server did not start (its log is named).
    """
    root = Path(workdir).resolve()
    with _locked(root):
        running = find(root)
        if running is not None:
            return running, False
        _stop(root)  # what a service that died left behind
        return _start(root, num_cpus), True


def _start(root: Path, num_cpus: int | None) -> Service:
    folder = root / SERVICE_DIR
    token = folder / "ray_auth_token"
    with contextlib.suppress(FileNotFoundError):
        token.unlink()
    descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # only its owner reads it
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix="tuner-", dir="/tmp")  # Ray's socket paths must stay short
    ray_port, mlflow_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_AUTH_TOKEN", None)  # the file is the token
    # Ports of its own for what Ray otherwise puts on fixed ones (its agent's 52365, Ray Client's 10001): a
    # second Ray on this machine (another work directory's, a cold launch's, a test cluster) would take them.
    ray_args = [
        _ray_command(), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(ray_port),
        "--dashboard-agent-listen-port", str(_free_port()), "--ray-client-server-port", str(_free_port()),
        "--include-dashboard", "false", "--temp-dir", temp_dir,
    ]  # fmt: skip
    if num_cpus is not None:
        ray_args += ["--num-cpus", str(num_cpus)]
    ray_log = folder / "ray.log"
    ray_process = _spawn(ray_args, ray_log, env)
    mlflow_log = folder / "mlflow.log"
    command = mlflow_server_command(store_uri(root), root / "mlartifacts", host="127.0.0.1", port=mlflow_port)
    mlflow_process = _spawn(command, mlflow_log, {**os.environ, **MLFLOW_SERVER_ENV})
    service = Service(
        ray_address=f"127.0.0.1:{ray_port}",
        token_path=str(token),
        mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        store=store_uri(root),
        ray_pid=ray_process.pid,
        mlflow_pid=mlflow_process.pid,
        temp_dir=temp_dir,
    )
    _write(root, service)  # before waiting: a start that fails is stopped from the record
    try:
        _wait_for(ray_process, ray_log, lambda: "Ray runtime started" in _tail(ray_log), "the Ray head")
        _wait_for(mlflow_process, mlflow_log, lambda: _healthy(service.mlflow_url), "the MLflow server")
    except BaseException:
        _stop(root)
        raise
    return service


def stop(workdir: str | Path) -> Service | None:
    """Stop the service recorded in ``workdir`` (and what a dead one left behind); returns what was stopped,
    or None when no service was recorded there."""
    root = Path(workdir).resolve()
    with _locked(root):
        return _stop(root)


def _stop(root: Path) -> Service | None:
    service = _read(root)
    if service is None:
        return None
    # Only groups that still hold the service's own processes: a group number a stale record names may have
    # been given to someone else's processes since (after a reboot, say).
    markers = {service.ray_pid: service.temp_dir, service.mlflow_pid: service.store}
    groups = [group for group, marker in markers.items() if _group_holds(group, marker)]
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + STOP_PATIENCE
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups) | bool(_strays(service.temp_dir)):
        time.sleep(0.2)
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for pid in _strays(service.temp_dir):  # a Ray process that left the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(service.temp_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        Path(service.token_path).unlink()
    with contextlib.suppress(FileNotFoundError):
        _record(root).unlink()
    return service


def _write(root: Path, service: Service) -> None:
    record = _record(root)
    partial = record.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(service), indent=2))
    partial.replace(record)


def _ray_command() -> str:
    """The ``ray`` command of this Python environment (beside its interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise TunerError("cannot find Ray's `ray` command beside this Python or on PATH")
    return found


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait_for(process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_PATIENCE
    while not ready():
        if process.poll() is not None:
            raise TunerError(f"{what} did not start (exit {process.returncode}); see {log}")
        if time.monotonic() > deadline:
            raise TunerError(f"{what} did not start within {START_PATIENCE:.0f} s; see {log}")
        time.sleep(0.2)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-20000:]
    except OSError:
        return ""


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(group: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # reap this process's own children (a start that failed)
        os.waitpid(-group, os.WNOHANG)
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_holds(group: int, marker: str) -> bool:
    """Whether a process of process group ``group`` has ``marker`` in its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == group and marker.encode() in command:
            return True
    return False


def _strays(temp_dir: str) -> list[int]:
    """Processes whose command line names the head's session directory: Ray's own, wherever they run."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in command:
            found.append(int(entry.name))
    return found
