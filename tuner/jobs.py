"""``tuner submit``: a whole launch sent to a Ray cluster's head as a Ray job (Ray's Job Submission API).

The spec (and a data file it names) travels in the job's runtime environment (``working_dir``); the job runs
``tuner launch`` on the head, where the Optuna and MLflow stores are the cluster's (see docker/compose.yaml).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tuner.errors import TunerError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from tuner.spec import Spec

__all__ = ["job_logs", "job_status", "list_jobs", "submit"]

#: Job metadata key naming the study a job runs.
STUDY_KEY = "tuner.study"
#: How long ``submit`` keeps trying while the head's job agent is not ready ("No available agent to submit
#: job, please try again later": a head just started, or too busy to answer within Ray's 10 seconds).
SUBMIT_PATIENCE = 60.0


def client(address: str | None) -> JobSubmissionClient:
    """A job client for the head's dashboard (``http://HOST:8265``; default RAY_API_SERVER_ADDRESS or
    RAY_ADDRESS, as Ray resolves it).

    With RAY_AUTH_TOKEN set, every request carries it. Ray's own client sends it only when RAY_AUTH_MODE=token
    is set too, and refuses with "Missing authentication token" otherwise; a token given is a token meant.
    (With RAY_AUTH_MODE=token, Ray's own lookup applies as well: RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.)

    Raises:
        TunerError: no cluster answers there.
    """
    from ray.job_submission import JobSubmissionClient

    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with _quiet_ray():
            return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "RAY_API_SERVER_ADDRESS / RAY_ADDRESS"
        raise TunerError(f"cannot reach Ray's job server at {where}: {str(exc).splitlines()[0]}") from None


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray's job client logs each package upload and log stream at INFO (its modules set their own loggers to
    INFO), and tuner prints its own lines: while a call runs, the handler Ray's loggers write through lets only
    warnings and errors by; then it is left as it was."""
    import ray  # noqa: F401  (Ray sets up its logging handler when first imported)

    def warnings_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    handlers = list(logging.getLogger("ray").handlers)
    for handler in handlers:
        handler.addFilter(warnings_only)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(warnings_only)


def submit(spec: Spec, *, address: str | None, options: list[str]) -> str:
    """Submit ``tuner launch`` of ``spec`` as a Ray job; returns the job id.

    ``options`` are further ``tuner launch`` options (``--trials 6``, ``--tracking-uri ...``), passed as given.
    """
    from tuner.trainable import WORKER_ENV

    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="tuner-job-") as directory:
        doc = spec.to_doc()
        if spec.data.path:  # the data file travels with the spec, named relative to it
            source = Path(spec.data.path)
            shutil.copy(source, Path(directory) / source.name)
            doc["data"]["dataset"] = f"{spec.data.dataset}:{source.name}"
        (Path(directory) / "spec.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        command = ["python", "-m", "tuner", "launch", "spec.yaml", "--json", *options]
        # The id is chosen here, so that a retry cannot submit the study twice: a second submission of the
        # same id is refused, which says the first one went through.
        submission_id = "raysubmit_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(16))
        deadline = time.monotonic() + SUBMIT_PATIENCE
        while True:
            try:
                with _quiet_ray():
                    return str(
                        jobs.submit_job(
                            entrypoint=shlex.join(command),
                            # The launch inside the job leaves the job's runtime environment alone (see runner).
                            runtime_env={"working_dir": directory, "env_vars": dict(WORKER_ENV)},
                            metadata={STUDY_KEY: spec.study.name},
                            submission_id=submission_id,
                        )
                    )
            except RuntimeError as exc:
                text = str(exc)
                if "already exists" in text and submission_id in text:
                    return submission_id
                if "try again later" not in text or time.monotonic() > deadline:
                    raise TunerError(f"the cluster refused the job: {text.splitlines()[0]}") from None
                time.sleep(2.0)


def job_status(job_id: str, *, address: str | None) -> str:
    """The job's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    try:
        return str(client(address).get_job_status(job_id).value)
    except RuntimeError as exc:
        raise TunerError(f"no job {job_id}: {str(exc).splitlines()[0]}") from None


def job_logs(job_id: str, *, address: str | None, follow: bool = False) -> None:
    """Write the job's output to stdout; with ``follow``, until it ends."""
    jobs = client(address)
    try:
        if not follow:
            sys.stdout.write(jobs.get_job_logs(job_id))
            return
        import asyncio

        async def tail() -> None:
            async for lines in jobs.tail_job_logs(job_id):
                sys.stdout.write(lines)
                sys.stdout.flush()

        with _quiet_ray():
            asyncio.run(tail())
    except RuntimeError as exc:
        raise TunerError(f"no job {job_id}: {str(exc).splitlines()[0]}") from None


def list_jobs(*, address: str | None) -> list[dict[str, Any]]:
    """Every tuner job the cluster knows: id, study, status, start time."""
    out = []
    for job in client(address).list_jobs():
        metadata = job.metadata or {}
        if STUDY_KEY in metadata:
            out.append(
                {
                    "job_id": job.submission_id,
                    "study": metadata[STUDY_KEY],
                    "status": str(job.status.value),
                    "start_time": job.start_time,
                }
            )
    return sorted(out, key=lambda j: j["start_time"] or 0)
