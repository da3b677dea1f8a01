"""Environment variables set for a while, then put back as they were: a launch leaves the caller's process
as it found it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def setting(variables: Mapping[str, str], *, override: bool = True) -> Iterator[None]:
    """``variables`` in ``os.environ`` (unless ``override`` is false, only those it does not set already);
    afterwards each as it was, set or not.

    Example::

        with setting({"TUNE_RESULT_BUFFER_LENGTH": "1000"}):
            tuner.fit()
    """
    saved = {key: os.environ.get(key) for key in variables}
    for key, value in variables.items():
        if override:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, was in saved.items():
            if was is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = was
