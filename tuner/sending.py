"""Sending a launch's records to MLflow: each record an outbox keeps (see :mod:`tuner.outbox`) becomes one
MLflow call, by the outbox's thread during a launch or by ``tuner sync`` afterwards.

With :mod:`tuner.tracking`, which writes the records, the only modules of a launch that import MLflow (besides
:func:`tuner.engine.export` on the workers; `tuner lr-find` records its one run itself, :mod:`tuner.lrfind`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuner import environ, outbox, service
from tuner.errors import TunerError

__all__ = ["BOUNDED_REQUESTS", "OUTBOX", "QUIET_CLIENT", "RUN", "Sender", "client_settings", "first_line", "sync"]

#: Where in the work directory a launch keeps its records until MLflow has them (see :mod:`tuner.outbox`).
OUTBOX = Path(".tuner") / "outbox"
#: MLflow's client, as tuner sets it unless the environment says otherwise: no "View run" link printed for
#: every run it ends (tuner prints its own); with ``bounded``, one try per HTTP request and 10 s at most
#: (MLflow's defaults retry for minutes; the outbox does the retrying, away from the Tune loop).
QUIET_CLIENT = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
BOUNDED_REQUESTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(outbox.REQUEST_SECONDS)),
}


#: A record's run named by its MLflow id, rather than by a key the outbox maps to one.
RUN = "run:"


class Sender:
    """Sends an outbox's records to MLflow, in order (see :mod:`tuner.outbox`): one MLflow call each."""

    def __init__(self, client: MlflowClient, directory: Path) -> None:
        self.client, self.directory = client, directory
        self.runs: dict[str, str] = {}

    def learn(self, record: dict[str, Any], answer: Any) -> None:
        """Note the runs a record named or made (``answer``: what sending it returned)."""
        if record.get("op") == "runs":
            self.runs.update(record["runs"])
        elif record.get("op") == "create_run" and isinstance(answer, str):
            self.runs[record["key"]] = answer

    def __call__(self, record: dict[str, Any], sent_before: bool) -> Any:
        with _answering():
            answer = self._send(record, sent_before)
        self.learn(record, answer)
        return answer

    def _send(self, record: dict[str, Any], sent_before: bool) -> Any:
        op = record["op"]
        if op == "runs":
            return None
        if op == "create_run":
            if sent_before:  # an earlier try may have made it: the server, not the answer, was lost
                where = " and ".join(f"tags.`{k}` = '{record['tags'][k]}'" for k in record["match"])
                found = self.client.search_runs([record["experiment_id"]], where, max_results=1)
                if found:
                    return found[0].info.run_id
            tags, name = record["tags"], record["run_name"]
            run = self.client.create_run(record["experiment_id"], record["start_time"], tags, name)
            return run.info.run_id
        run_id = self._run_id(record["run"])
        if op == "log_batch":
            metrics = [Metric(k, v, stamp, step) for k, v, stamp, step in record.get("metrics", ())]
            params = [Param(k, v) for k, v in record.get("params", {}).items()]
            tags = [RunTag(k, v) for k, v in record.get("tags", {}).items()]
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        elif op == "set_terminated":
            self.client.set_terminated(run_id, record["status"], record["end_time"])
        elif op == "log_input":
            dataset = DatasetInput(Dataset(**record["dataset"]), [InputTag("mlflow.data.context", record["context"])])
            self.client.log_inputs(run_id, datasets=[dataset])
        elif op == "log_model":
            return self._log_model(record, run_id, sent_before)
        elif op == "log_artifact":
            path = self.directory / record["path"]
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), record["artifact_path"])
            else:
                self.client.log_artifact(run_id, str(path), record["artifact_path"])
        else:
            raise ValueError(f"unknown record {op!r}")
        return None

    def _log_model(self, record: dict[str, Any], run_id: str, sent_before: bool) -> str:
        """The best model as an MLflow logged model of the experiment (its Models view), and, if asked, a new
        version of a registered model; returns the logged model's id."""
        model = None
        if sent_before:  # an earlier try may have made it
            where = f"tags.`tuner.trial` = '{record['tags']['tuner.trial']}' AND source_run_id = '{run_id}'"
            found = self.client.search_logged_models([record["experiment_id"]], filter_string=where, max_results=1)
            model = found[0] if found else None
        if model is None:
            model = self.client.create_logged_model(
                record["experiment_id"], record["name"], source_run_id=run_id, tags=record["tags"], model_type="keras"
            )
        if str(model.status) != "READY":
            self.client.log_model_artifacts(model.model_id, str(self.directory / record["path"]))
            self.client.finalize_logged_model(model.model_id, "READY")
        name = record.get("register")
        if name:
            with contextlib.suppress(MlflowException):  # it exists: a new version of it
                self.client.create_registered_model(name)
            if not (sent_before and self.client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")):
                self.client.create_model_version(
                    name, model.artifact_location, run_id, model_id=model.model_id, await_creation_for=0
                )
        return str(model.model_id)

    def _run_id(self, run: str) -> str:
        if run.startswith(RUN):
            return run[len(RUN) :]
        if run not in self.runs:
            raise LookupError(f"the run {run!r} was never made")
        return self.runs[run]


@contextlib.contextmanager
def client_settings(*, bounded: bool = True) -> Iterator[None]:
    """:data:`QUIET_CLIENT` (and, if ``bounded``, :data:`BOUNDED_REQUESTS`) in the environment, where it does
    not say otherwise; then the environment as it was. The launch's own first requests (its experiment and
    parent run, a resumed launch's records read back) keep MLflow's retries."""
    with environ.setting(QUIET_CLIENT | (BOUNDED_REQUESTS if bounded else {}), override=False):
        yield


def sync(
    study: str,
    *,
    workdir: Path,
    tracking_uri: str | None = None,
    warn: Callable[[str], None] | None = None,
    quiet: bool = False,
) -> tuple[int, int]:
    """Send what launches of ``study`` kept in ``workdir`` while MLflow was unreachable, oldest first.

    Args:
        tracking_uri: where to send them; default, where each launch was sending them.
        quiet: an unreachable server or a launch still running leaves its records waiting without an error.

    Returns:
        ``(sent, waiting)``: records sent now, and records still waiting (a running launch's).

    Raises:
        TunerError: the server does not answer (unless ``quiet``).
    """
    warn = warn or (lambda text: None)
    sent = waiting = 0
    for directory in outbox.outboxes(workdir / OUTBOX):
        about = outbox.header(directory)
        if about is None or about.get("study") != study:
            continue  # another study's, or one being made this moment
        uri = tracking_uri or _destination(about, workdir)
        sender = Sender(MlflowClient(tracking_uri=uri), directory)
        try:
            with client_settings():
                _check_holds(sender.client, uri, about)
                sent += outbox.drain(directory, sender, sender.learn, warn)
        except FileNotFoundError:
            continue  # another process sent it meanwhile
        except outbox.Busy:
            waiting += outbox.waiting(directory)
        except (outbox.Unreachable, TunerError) as exc:
            if quiet:
                waiting += outbox.waiting(directory)
            elif isinstance(exc, TunerError):
                raise
            else:
                raise TunerError(f"cannot reach the MLflow tracking server at {uri} ({exc})") from None
    return sent, waiting


def _destination(about: dict[str, Any], workdir: Path) -> str:
    """Where an outbox's records go by default: where its launch sent them; for a launch that sent them
    through tuner up's server, that server while it serves the store, else the store itself."""
    store = about.get("store")
    if not store:
        return str(about["tracking_uri"])
    served = service.find(workdir)
    return served.url_for(str(store)) if served is not None else str(store)


def _check_holds(client: MlflowClient, uri: str, about: dict[str, Any]) -> None:
    """Raise unless the store at ``uri`` holds the parent run an outbox's records belong to: records sent to
    another store would be refused, and a person should give the right address instead.

    Raises:
        outbox.Unreachable: the server does not answer.
        TunerError: it answers, without the run.
    """
    parent = about.get("parent_run_id")
    if not parent:
        return
    try:
        with _answering():
            client.get_run(parent)
    except MlflowException:
        raise TunerError(
            f"{uri} does not hold run {parent}, which the waiting records belong to; give the tracking URI the "
            f"launch used ({about['tracking_uri']})"
        ) from None


#: MLflow's error codes that mean a record itself is wrong: sending it again would fail again. Any other
#: failure (no connection, a 5xx, 401 or 403 while credentials are wrong, a proxy's 404) keeps it waiting.
REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
           "BAD_REQUEST", "MALFORMED_REQUEST"}  # fmt: skip


@contextlib.contextmanager
def _answering() -> Iterator[None]:
    """MLflow failures as the outbox reads them: :class:`tuner.outbox.Unreachable` unless the record was refused."""
    import requests

    try:
        yield
    except MlflowException as exc:
        if exc.error_code in REFUSED:
            raise
        raise outbox.Unreachable(_reason(exc)) from None
    except requests.HTTPError as exc:  # from an artifact upload
        if exc.response is not None and exc.response.status_code == 400:
            raise
        raise outbox.Unreachable(_reason(exc)) from None
    except (requests.RequestException, ConnectionError, TimeoutError) as exc:
        raise outbox.Unreachable(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    """Why a request failed, in a few words (MLflow's messages quote the whole URL and the retry policy)."""
    text = str(exc)
    for words, reason in (("Connection refused", "connection refused"), ("Connection aborted", "connection lost"),
                          ("Connection reset", "connection lost"), ("RemoteDisconnected", "connection lost"),
                          ("timed out", "timed out"), ("Timeout", "timed out"),
                          ("too many 50", "server errors"),
                          ("Name or service not known", "unknown host")):  # fmt: skip
        if words in text:
            return reason
    return f"{type(exc).__name__}: {first_line(exc)[:120]}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
