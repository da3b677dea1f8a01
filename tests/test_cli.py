"""The ``tuner`` command: CliRunner for parsing and errors, real subprocesses for whole launches."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tuner.cli import main
from tuner.sending import OUTBOX

from .conftest import ROOT, SEARCH_SPACES, write
from .test_spec import BAD, expected_error

TUNER = str(Path(sys.executable).with_name("tuner"))
OPTUNA = str(Path(sys.executable).with_name("optuna"))


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_validate_accepts_every_shipped_spec(path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: ok: ")
    assert "optimizer {" in lines[0]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_validate_rejects_a_bad_spec_with_one_line_and_exit_2(path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"error: {path}: {expected_error(path)}\n"


@pytest.mark.parametrize(
    "path",
    [
        BAD[0],
        *(
            p
            for p in BAD
            if p.stem
            in ("low_above_high", "missing_csv", "unknown_optimizer", "csv_one_class", "duplicate_key", "not_utf8")
        ),
    ],
    ids=lambda p: p.stem,
)
def test_launch_with_a_bad_spec_creates_nothing(path: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = CliRunner().invoke(main, ["launch", str(path), "--workdir", str(workdir)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: {expected_error(path)}\n"
    assert "Traceback" not in result.output
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--trials", "0"], "Invalid value for '--trials': 0 is not in the range x>=1."),
        (["--epochs", "-1"], "Invalid value for '--epochs': -1 is not in the range x>=1."),
        (
            ["--name", "a b"],
            "error: --name: must be letters, digits, '.', '_' or '-', starting with a letter or digit (got 'a b')",
        ),
        (
            ["--storage", "not a url"],
            "error: --storage: not a database URL, e.g. sqlite:///optuna.db (got 'not a url')",
        ),
        (
            ["--register-model", "team/mlp"],
            "error: --register-model: must be a name without /, : or ' (got 'team/mlp')",
        ),
        (
            ["--resume", "--trials", "3", "--epochs", "2"],
            "error: --resume finishes the interrupted launch as it was asked for; --trials, --epochs cannot change it",
        ),
    ],
)
def test_bad_options_exit_2_and_create_nothing(options: list[str], message: str, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    spec = str(ROOT / "search_spaces" / "adam.yaml")
    result = CliRunner().invoke(main, ["launch", spec, "--workdir", str(workdir), *options])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not workdir.exists()


def test_help_and_validate_import_nothing_heavy() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from tuner.cli import main; "
        f"r = CliRunner().invoke(main, ['validate', {str(SEARCH_SPACES[0])!r}]); assert r.exit_code == 0, r.output; "
        "heavy = ('tensorflow', 'ray', 'optuna', 'mlflow', 'keras', 'sklearn', 'numpy'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def launch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([TUNER, "launch", *args], capture_output=True, text=True, timeout=600, **kwargs)


def test_launch_end_to_end_with_json_and_the_optuna_cli(optimizers_launch: tuple[Path, dict]) -> None:
    """The acceptance run: a real `tuner launch` process, then Optuna's own CLI on its storage."""
    workdir, summary = optimizers_launch
    assert summary["study"] == "optimizers-digits"
    assert summary["storage"] == f"sqlite:///{workdir / 'optuna.db'}"
    assert sum(summary["trials"].values()) == 6 and summary["trials"]["complete"] >= 1
    assert set(summary["best"]) == {"number", "value", "params"} and summary["wall_seconds"] > 0
    assert "trial #" in summary["_stdout"] and "best trials by val_loss" in summary["_stdout"]

    listed = subprocess.run(
        [OPTUNA, "trials", "--study-name", summary["study"], "--storage", summary["storage"], "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    trials = json.loads(listed.stdout)
    assert len(trials) == 6
    takes = {"sgd": {"momentum", "nesterov"}, "rmsprop": {"rho"}, "adam": {"beta_1", "beta_2"}}
    for t in trials:
        chosen = t["params"]["optimizer"]
        names = {p.partition("/")[2] for p in t["params"] if p.startswith(f"{chosen}/")}
        assert takes[chosen] <= names
        others = [p for p in t["params"] if "/" in p and not p.startswith(f"{chosen}/")]
        assert not others
        if chosen == "sgd":
            assert not {"beta_1", "rho"} & {p.partition("/")[2] for p in t["params"]}
    best = summary["best"]
    optuna_best = next(t for t in trials if t["number"] == best["number"])
    assert optuna_best["value"] == best["value"] and optuna_best["state"] == "COMPLETE"


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_and_sigterm_stop_the_study_cleanly(tmp_path: Path, stop: signal.Signals, status: int) -> None:
    """Ctrl-C, or SIGTERM (kill, docker stop, a Ray job being stopped), mid-study: the running trials become FAIL
    'interrupted before it finished' in Optuna, every MLflow run is closed, and the exit status says which."""
    spec = write(
        tmp_path / "long.yaml",
        "study: {name: long, trials: 40}\ntraining: {epochs: 10}\npruning: {scheduler: none}\noptimizers: {adam: {}}\n",
    )
    proc = subprocess.Popen(
        [TUNER, "launch", str(spec), "--workdir", str(tmp_path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # wait until the first trial has finished
        lines.append(line)
        if line.startswith("[") or time.monotonic() > deadline:
            break
    proc.send_signal(stop)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()  # a launch that hangs must not outlive its test
    assert proc.returncode == status, err
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["terminated"] is (stop == signal.SIGTERM)
    study = optuna.load_study(study_name="long", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.COMPLETE in states
    assert len(states) < 40
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert interrupted, "a trial was running when the signal came"
    assert all(t.user_attrs["fail_reason"] == "interrupted before it finished" for t in interrupted)
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    runs = client.search_runs([summary["mlflow"]["experiment_id"]])
    assert runs and "RUNNING" not in {r.info.status for r in runs}
    failed = {int(r.data.tags["optuna.trial_number"]) for r in runs if r.data.tags.get("fail_reason")}
    assert failed == {t.number for t in interrupted}


@pytest.mark.parametrize("moment", ["ray starting", "stores opening"])
def test_sigterm_while_a_launch_starts_is_a_clean_stop_too(tmp_path: Path, moment: str) -> None:
    """SIGTERM in a launch's first seconds, while Ray starts (ray.init, from the main thread, would put in a
    SIGTERM handler of its own that exits wherever the thread is) or while the stores open beside it: exit
    143, and no MLflow run is left RUNNING."""
    spec = ROOT / "search_spaces" / "adam.yaml"
    started = time.time()
    proc = subprocess.Popen(
        [TUNER, "launch", str(spec), "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def reached() -> bool:
        if moment == "ray starting":  # ray.init makes its session directory, named after the driver's pid, first
            sessions = Path("/tmp/ray").glob(f"session_*_{proc.pid}")
            return any(d.stat().st_mtime >= started for d in sessions)  # not an older process's, with that pid
        return (tmp_path / OUTBOX).is_dir()  # the MLflow records are open

    deadline = time.monotonic() + 120
    while not reached() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a launch that hangs must not outlive its test
    assert proc.returncode == 143, err
    # Stopped at the first safe point: before the launch was announced, or (a signal that came a moment
    # later) in Ray Tune's loop, at its first step.
    stopped = "terminated: unfinished trials were recorded as failed; `tuner resume adam-digits` runs the ones"
    assert (err == "terminated\n" and not out.startswith("study ")) or err.startswith(stopped), err
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and "RUNNING" not in [r.info.status for r in runs]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status in {"FAILED", "KILLED"}  # failed before it began; killed, interrupted, after
    assert not list((tmp_path / OUTBOX).iterdir())


def test_a_storage_optuna_cannot_open_is_exit_1_and_one_line(tmp_path: Path) -> None:
    """A well-formed URL for a database that is not there is a failure of the surroundings, not bad input."""
    spec = ROOT / "search_spaces" / "adam.yaml"
    done = launch(str(spec), "--workdir", str(tmp_path), "--storage", "nosuchdb://x/y", "--trials", "1")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: cannot open the Optuna storage nosuchdb://x/y")
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_optuna_storage_comes_from_optuna_storage_as_optunas_cli_reads_it(tmp_path: Path) -> None:
    """OPTUNA_STORAGE, the variable Optuna's own CLI reads, is the default of --storage (the cluster sets it)."""
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    optuna.create_study(study_name="other", storage=url)
    result = CliRunner().invoke(main, ["resume", "nosuch", "--workdir", str(tmp_path)], env={"OPTUNA_STORAGE": url})
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no study 'nosuch' in {url}"
    assert not (tmp_path / "optuna.db").exists()
