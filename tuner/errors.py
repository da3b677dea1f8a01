"""Errors that tuner raises on purpose. Each one carries the exit code the CLI uses."""

from __future__ import annotations

from typing import Any

__all__ = ["SpecError", "Terminated", "TunerError", "UsageError", "show"]

_MISSING: Any = object()


class TunerError(Exception):
    """Something the user can act on; the CLI prints it as one line and exits with ``exit_code``."""

    exit_code = 1


class UsageError(TunerError):
    """Bad input: a command-line option or a spec. Nothing has been created when this is raised."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, ``kill``, a Ray job being stopped), which tuner handles as Ctrl-C; the CLI then
    exits with 143 (128 + 15), as a process that SIGTERM ended does."""


class SpecError(UsageError):
    """A spec file breaks a rule.

    The message names the file, the key path, the rule and the value found, e.g.
    ``search_spaces/x.yaml: optimizers.adam.beta_1: low must be below high (got low=0.99, high=0.9)``.
    """

    def __init__(self, source: str, key: str, rule: str, got: Any = _MISSING) -> None:
        self.source, self.key, self.rule = source, key, rule
        message = f"{source}: {key}: {rule}" if key else f"{source}: {rule}"
        if got is not _MISSING:
            message += f" (got {got if isinstance(got, _Shown) else show(got)})"
        super().__init__(message)


class _Shown(str):
    """Text already formatted for a message's ``(got ...)`` part."""


def shown(text: str) -> _Shown:
    return _Shown(text)


def show(value: Any) -> str:
    """Write a value the way it looks in YAML, so the user recognises what they typed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping" if value else "{}"
    if isinstance(value, list):
        return "a list" if value else "[]"
    return repr(value)
