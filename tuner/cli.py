"""The ``tuner`` command. Each command parses, calls one function, prints.

Exit codes: 0 success; 2 bad input (a spec or an option); 1 anything else; 130 interrupted (Ctrl-C);
143 terminated (SIGTERM).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tuner import __version__
from tuner.errors import Terminated, TunerError, UsageError
from tuner.spec import load_spec

F = TypeVar("F", bound=Callable[..., Any])

#: Set in ``click.Context.meta`` (shared by a command and its group) by the commands that take ``--verbose``.
VERBOSE = "tuner.verbose"


class _Group(click.Group):
    """The command group, which turns every error a command raises into one line on stderr and an exit code:
    a TunerError's own (2 for bad input), 130 for Ctrl-C, 143 for SIGTERM, 1 for anything else. ``--verbose``
    adds the trace."""

    def invoke(self, ctx: click.Context) -> Any:
        # Before Ray is imported (it reads this once): no native SIGTERM handler in this process. Ray's core
        # worker would put in absl's failure-signal handler as ray.init connects, and a SIGTERM then aborts the
        # launch (a stack dump, no clean stop) instead of stopping it cleanly (143). Workers keep theirs
        # (trainable.WORKER_ENV).
        os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise  # click's own: usage errors and --help already say what they mean
        except TunerError as exc:
            self._trace(ctx)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            stopped = isinstance(exc, Terminated)
            click.echo("terminated" if stopped else "interrupted", err=True)
            sys.exit(143 if stopped else 130)
        except Exception as exc:  # the CLI's last line of defence
            self._trace(ctx)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            hint = " (run with --verbose for the full trace)" if ctx.meta.get(VERBOSE) is False else ""
            click.echo(f"error: {type(exc).__name__}: {first}{hint}", err=True)
            sys.exit(1)

    @staticmethod
    def _trace(ctx: click.Context) -> bool:
        verbose = bool(ctx.meta.get(VERBOSE))
        if verbose:
            traceback.print_exc()
        return verbose


def _remember_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[VERBOSE] = value
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tuner")
def main() -> None:
    """Hyperparameter search for Keras models: Optuna proposes, Ray Tune trains, MLflow records."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
def validate(spec: str) -> None:
    """Check SPEC and describe its search space in one line (exit 2 with the error if it is invalid)."""
    click.echo(f"{spec}: ok: {load_spec(spec).describe()}")


def _workdir(what: str) -> Callable[[F], F]:
    return click.option(
        "--workdir",
        type=click.Path(file_okay=False),
        default=".",
        show_default=True,
        envvar="TUNER_WORKDIR",
        help=f"{what} (env: TUNER_WORKDIR).",
    )


def _run_options(command: F) -> F:
    """The options every command that runs a study takes: where its state lives, where it runs, output."""
    return _where_options(command, studies=True)


def _where_options(command: F, *, studies: bool = False) -> F:
    """Where the work runs and what it prints; with ``studies``, also where a study's trials keep their state
    (Optuna's storage, Ray Tune's checkpoints)."""
    storage = click.option(
        "--storage",
        metavar="OPTUNA_URL",
        envvar="OPTUNA_STORAGE",
        help="Optuna storage [default: OPTUNA_STORAGE, as Optuna's CLI reads it, else sqlite:///WORKDIR/optuna.db].",
    )
    storage_path = click.option(
        "--storage-path",
        metavar="PATH_OR_URI",
        help="Where trials keep their checkpoints, seen by every node [default: WORKDIR/ray_results].",
    )
    options = [
        *([storage] if studies else []),
        click.option(
            "--tracking-uri",
            metavar="URI",
            help="MLflow tracking URI [default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db].",
        ),
        click.option(
            "--address", metavar="RAY_ADDRESS", help="Ray cluster to run on [default: RAY_ADDRESS, else local]."
        ),
        *([storage_path] if studies else []),
        _workdir("Where the run writes everything"),
        click.option("--json", "as_json", is_flag=True, help="End stdout with one JSON object describing the result."),
        click.option(
            "--verbose",
            "-v",
            is_flag=True,
            callback=_remember_verbose,
            help="Show Ray's and TensorFlow's output and full tracebacks.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _registered_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A registered model's name as MLflow takes it (checked here, before the study runs, not at its end)."""
    if value is not None and (not value.strip() or any(c in value for c in "/:'")):
        raise UsageError(f"--register-model: must be a name without /, : or ' (got {value!r})")
    return value


_register_model = click.option(
    "--register-model",
    metavar="NAME",
    callback=_registered_name,
    help="Register the best model as a new version of MLflow registered model NAME.",
)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--trials", type=click.IntRange(min=1), help="Number of trials (overrides study.trials).")
@click.option("--concurrency", type=click.IntRange(min=1), help="Trials at once (default: one per CPU).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per trial (overrides training.epochs).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of the sampler, the split and the trials.")
@click.option("--name", help="Study name (overrides study.name).")
@click.option("--resume", is_flag=True, help="Finish the study's interrupted last launch instead (see tuner resume).")
@_register_model
@_run_options
def launch(
    spec: str,
    trials: int | None,
    concurrency: int | None,
    epochs: int | None,
    seed: int | None,
    name: str | None,
    resume: bool,
    register_model: str | None,
    **run: Any,
) -> None:
    """Run the study SPEC describes and print its best trials."""
    overrides = {"trials": trials, "concurrency": concurrency, "epochs": epochs, "seed": seed}
    given = [f"--{key}" for key, value in overrides.items() if value is not None]
    if resume and given:
        raise UsageError(
            f"--resume finishes the interrupted launch as it was asked for; {', '.join(given)} cannot change it"
        )
    loaded = load_spec(spec).override(**overrides, name=name)
    _run(loaded.study.name, None if resume else loaded, register_model=register_model, **run)


@main.command()
@click.argument("name")
@_register_model
@_run_options
def resume(name: str, **run: Any) -> None:
    """Finish study NAME's last launch after it was interrupted (Ctrl-C, a crash, kill -9).

    Its unfinished trials continue from their last checkpoints, under the same Optuna trials and MLflow runs;
    new trials make up the rest of the count the launch asked for. Give the same --workdir (or --storage)."""
    _run(name, None, **run)


def _service(workdir: str, address: str | None, verbose: bool) -> Any:
    """tuner up's service in ``workdir``, if one is up there, with this process set to use its Ray (unless
    ``address`` names another); None without one. Call before Ray is imported: it reads these once."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    from tuner import service

    served = service.find(workdir)
    address = address or os.environ.get("RAY_ADDRESS")
    if served is not None and address in (None, served.ray_address):
        # A token exported for another cluster would win over the service's file.
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update(service.auth_environment(served))
    return served


def _run(name: str, spec: Any, *, as_json: bool, verbose: bool, workdir: str, **where: Any) -> None:
    """Run ``spec`` as a new launch, or resume study ``name`` when ``spec`` is None; print as it goes."""
    served = _service(workdir, where.get("address"), verbose)
    from rich.console import Console

    from tuner import report
    from tuner.runner import resume_study, run_study

    launched: list[Any] = []
    done = 0

    def announce(launch: Any) -> None:
        launched.append(launch)
        click.echo(report.launch_line(launch))

    def progress(outcome: Any) -> None:
        nonlocal done
        done += 1
        click.echo(report.trial_line(outcome, launched[0].metric, done, launched[0].trials))

    options = dict(where, workdir=workdir, verbose=verbose, progress=progress, announce=announce, service=served)
    options["warn"] = _warn
    result = resume_study(name, **options) if spec is None else run_study(spec, **options)
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 200
    console.print(report.best_table(result))
    click.echo(report.summary_line(result))
    click.echo(f"optuna: optuna trials --study-name {result.study} --storage {result.storage}")
    if result.mlflow:
        click.echo(_mlflow_line(result.mlflow, result.study, workdir))
    if result.unsent_records:
        # Through tuner up's server: `tuner sync` finds the store by itself, the server may be gone by then.
        runs = result.mlflow
        if served is not None and runs and runs["tracking_uri"] == served.mlflow_url:
            runs = None
        click.echo(_unsent_line(result.unsent_records, result.study, workdir, runs), err=True)
    if as_json:
        click.echo(json.dumps(result.to_json()))
    if result.interrupted:
        click.echo(
            f"{'terminated' if result.terminated else 'interrupted'}: unfinished trials were recorded as failed; "
            f"`tuner resume {result.study}` runs the ones that had not started",
            err=True,
        )
        sys.exit(143 if result.terminated else 130)


@main.command("lr-find")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--optimizer",
    "optimizers",
    multiple=True,
    metavar="NAME",
    help="Sweep only this optimizer of the spec (repeatable) [default: every one].",
)
@click.option(
    "--write",
    "write",
    type=click.Path(dir_okay=False, writable=True),
    metavar="NEW_SPEC",
    help="Write the spec with each learning_rate narrowed to its suggestion.",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Sweeps per optimizer.")
@click.option("--steps", type=click.IntRange(min=50), default=100, show_default=True, help="Batches per sweep.")
@_where_options
def lr_find(
    spec: str,
    optimizers: tuple[str, ...],
    write: str | None,
    seeds: int,
    steps: int,
    as_json: bool,
    verbose: bool,
    **where: Any,
) -> None:
    """Suggest, per optimizer of SPEC, the learning rates worth searching: the learning-rate range test.

    A network trains while its learning rate rises one step per batch, from far below the spec's range to far
    above it, over several seeds, as Ray tasks; the loss creeps, falls, then blows up. The suggestion is where
    it falls (see the README). Recorded as the run lr-find in the study's MLflow experiment, with a plot."""
    loaded = load_spec(spec)
    known = [o.name for o in loaded.optimizers]
    for name in optimizers:
        if name not in known:
            raise UsageError(f"--optimizer: {spec} has no optimizer {name!r} (it has {', '.join(known)})")
    if write is not None:
        if os.path.abspath(write) == os.path.abspath(spec):
            raise UsageError("--write: give a new file; the spec itself is left as it is")
        folder = os.path.dirname(os.path.abspath(write))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"--write: cannot write in {folder} (got {write!r})")
        from tuner.lrfind import narrowed

        narrowed(spec, (), loaded)  # the new spec's document can be made: checked before the sweeps, not after
    workdir = where.pop("workdir")
    served = _service(workdir, where.get("address"), verbose)
    from tuner import lrfind
    from tuner.runner import RunOptions

    options = RunOptions(workdir=workdir, verbose=verbose, warn=_warn, service=served, **where)
    result = lrfind.find(loaded, options, optimizers=optimizers or None, seeds=seeds, steps=steps)
    click.echo(lrfind.table(result))
    if result.mlflow:
        click.echo(_mlflow_line(result.mlflow, result.study, workdir, run="run lr-find"))
    if write is not None:
        with open(write, "w", encoding="utf-8") as f:
            f.write(lrfind.narrowed(spec, result.suggestions, loaded))
        click.echo(f"wrote {write}")
    if as_json:
        click.echo(json.dumps(result.to_json()))


def _mlflow_line(runs: dict[str, str], study: str, workdir: str, run: str = "parent run") -> str:
    from tuner.tracking import experiment_url, ui_url

    uri, experiment = runs["tracking_uri"], runs["experiment_id"]
    parent = runs.get("parent_run_id") or runs["run_id"]
    where = f"mlflow: experiment {study} (id {experiment}), {run} {parent} in {uri}"
    if uri.startswith(("http://", "https://")):
        return f"{where}\n  open: {experiment_url(ui_url(uri), experiment, parent)}"
    return f"{where}\n  open: tuner ui --workdir {os.path.abspath(workdir)}"


def _unsent_line(count: int, study: str, workdir: str, runs: dict[str, str] | None) -> str:
    uri = f" --tracking-uri {runs['tracking_uri']}" if runs else ""
    return (
        f"mlflow: the tracking store did not take them; {count} record{'s' * (count != 1)} wait in "
        f"{os.path.abspath(workdir)}; send them with: tuner sync {study} --workdir {os.path.abspath(workdir)}{uri}"
    )


@main.command()
@click.argument("study")
@_workdir("Where the launches ran")
@click.option("--tracking-uri", metavar="URI", help="Where to send them [default: where each launch sent its records].")
def sync(study: str, workdir: str, tracking_uri: str | None) -> None:
    """Send MLflow the records that launches of STUDY kept in the work directory while it did not answer."""
    from pathlib import Path

    from tuner.sending import sync as send

    sent, waiting = send(study, workdir=Path(workdir).resolve(), tracking_uri=tracking_uri, warn=_warn)
    if not sent and not waiting:  # all sent before, or a study that never ran here: say which place was read
        click.echo(f"mlflow: no records of study {study} wait in {Path(workdir).resolve()}")
        return
    click.echo(f"mlflow: sent {sent} record{'s' * (sent != 1)} of study {study}")
    if waiting:
        click.echo(
            f"mlflow: {waiting} more record{'s' * (waiting != 1)} belong to another tuner process (a launch still "
            "running sends its own)",
            err=True,
        )


def _warn(text: str) -> None:
    click.echo(text, err=True)


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; others can reach it only if you say so."
)
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True, help="Where launch wrote.")
@click.option("--tracking-uri", metavar="URI", help="The MLflow store [default: as tuner launch uses].")
def ui(port: int, host: str, workdir: str, tracking_uri: str | None) -> None:
    """Start the MLflow UI on the store tuner launch writes to, and print where each study is."""
    from pathlib import Path

    from tuner import service
    from tuner.tracking import experiment_url, resolve_tracking_uri, serve_ui, study_experiments, ui_url

    root = Path(workdir).resolve()
    uri = resolve_tracking_uri(tracking_uri, root)
    served = service.find(root)
    if served is not None:  # tuner up's server, when it serves this store already
        uri = served.url_for(uri)
    if uri.startswith(("http://", "https://")):
        for name, experiment in study_experiments(uri):
            click.echo(f"{name}: {experiment_url(ui_url(uri), experiment)}")
        what = f"tuner up's MLflow server for {root}" if served and uri == served.mlflow_url else "a tracking server"
        click.echo(f"{uri} is {what}; its UI is there.")
        return
    base = f"http://{host}:{port}"
    for name, experiment in study_experiments(uri):
        click.echo(f"{name}: {experiment_url(base, experiment)}")
    click.echo(f"MLflow UI on {base} for {uri} (Ctrl-C to stop)")
    sys.exit(serve_ui(uri, root / "mlartifacts", host=host, port=port))


@main.command()
@_workdir("The work directory whose launches use the service")
@click.option("--num-cpus", type=click.IntRange(min=1), help="CPUs the Ray head offers trials [default: all].")
def up(workdir: str, num_cpus: int | None) -> None:
    """Start a local Ray head and an MLflow server for WORKDIR and leave them running: `tuner launch`,
    `tuner resume` and `tuner ui` there use them, and skip their start-up. `tuner down` stops them.

    Ray's token authentication is on (the token is in WORKDIR/.tuner, readable by you alone); MLflow binds
    to 127.0.0.1 and serves WORKDIR's own store, so the records land where a launch without the service
    puts them."""
    from pathlib import Path

    from tuner import service

    root = Path(workdir).resolve()
    running, started = service.start(root, num_cpus=num_cpus)
    click.echo(f"{'up' if started else 'already up'} in {root}:")
    click.echo(f"  ray: {running.ray_address} (token auth; token in {running.token_path})")
    click.echo(f"  mlflow: {running.mlflow_url} (store {running.store})")
    click.echo(f"launches in {root} use them until: tuner down --workdir {root}")


@main.command()
@_workdir("The work directory whose service to stop")
def down(workdir: str) -> None:
    """Stop the Ray head and the MLflow server `tuner up` started for WORKDIR."""
    from pathlib import Path

    from tuner import service

    root = Path(workdir).resolve()
    stopped = service.stop(root)
    click.echo(f"stopped the service in {root}" if stopped else f"no service is up in {root}")


#: Where ``submit``, ``logs`` and ``status`` find the cluster: its head's job server (the dashboard's port).
_job_address = click.option(
    "--address", metavar="http://HOST:8265", help="The head's job server [default: RAY_API_SERVER_ADDRESS]."
)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("spec", type=click.Path(dir_okay=False))
@_job_address
@click.argument("launch_options", nargs=-1, type=click.UNPROCESSED)
def submit(spec: str, address: str | None, launch_options: tuple[str, ...]) -> None:
    """Send `tuner launch SPEC [LAUNCH_OPTIONS]...` to a Ray cluster's head as a Ray job; print its id.

    The spec (and a data file it names) travel with the job. The launch runs on the head, with the head's
    TUNER_WORKDIR and MLFLOW_TRACKING_URI unless LAUNCH_OPTIONS say otherwise (e.g. --trials 30)."""
    from tuner import jobs

    job_id = jobs.submit(load_spec(spec), address=address, options=list(launch_options))
    where = f" --address {address}" if address else ""
    click.echo(job_id)
    click.echo(f"follow it: tuner logs {job_id}{where} --follow   (status: tuner status {job_id}{where})", err=True)


@main.command()
@click.argument("job_id")
@_job_address
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def logs(job_id: str, address: str | None, follow: bool) -> None:
    """Print the output of the submitted launch JOB_ID."""
    from tuner import jobs

    jobs.job_logs(job_id, address=address, follow=follow)


@main.command()
@click.argument("job_id", required=False)
@_job_address
def status(job_id: str | None, address: str | None) -> None:
    """Print JOB_ID's status, or every submitted launch with its study and status."""
    from tuner import jobs

    if job_id:
        click.echo(jobs.job_status(job_id, address=address))
        return
    for job in jobs.list_jobs(address=address):
        click.echo(f"{job['job_id']}  {job['status']:<9}  {job['study']}")
