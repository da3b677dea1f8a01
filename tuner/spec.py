"""A search written in YAML, validated into frozen objects.

Every error names the file, the key path, the rule and the value found::

    search_spaces/x.yaml: optimizers.adam.beta_1: low must be below high (got low=0.99, high=0.9)

This module imports neither TensorFlow, Ray, Optuna nor MLflow, so that ``tuner validate`` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner import data as datamod
from tuner.data import DATASETS, Data
from tuner.errors import SpecError, UsageError, show, shown
from tuner.optimizers import OPTIMIZERS, Hyperparameter
from tuner.plugins import SAMPLERS, SCHEDULERS

__all__ = [
    "Choice",
    "Model",
    "Optimizer",
    "Pruning",
    "Range",
    "Resources",
    "Spec",
    "Study",
    "Training",
    "Value",
    "is_searched",
    "load_spec",
    "parse_spec",
]


@dataclass(frozen=True)
class Range:
    """A range to search: ``{low, high}`` with optional ``log`` and ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def __str__(self) -> str:
        extra = " log" if self.log else f" step {self.step:g}" if self.step is not None else ""
        return f"[{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class Choice:
    """A choice to search: ``{choice: [...]}``."""

    options: tuple[Any, ...]

    def __str__(self) -> str:
        return "{" + ", ".join(show(o) for o in self.options) + "}"


#: A hyperparameter as the spec gives it: fixed (a scalar), a range or a choice.
Value = Range | Choice | bool | int | float | str


def is_searched(value: Value) -> bool:
    return isinstance(value, (Range, Choice))


@dataclass(frozen=True)
class Study:
    name: str
    metric: str
    mode: str
    trials: int
    concurrency: int | None
    sampler: str
    seed: int


@dataclass(frozen=True)
class Model:
    layers: Value = 1
    units: Value = 128
    activation: Value = "relu"
    dropout: Value = 0.0


@dataclass(frozen=True)
class Training:
    epochs: int = 20
    batch_size: Value = 64
    checkpoint_every: int = 1


@dataclass(frozen=True)
class Optimizer:
    """One optimizer type and the hyperparameters the spec sets for it (unset ones keep Keras' defaults)."""

    name: str
    params: tuple[tuple[str, Value], ...] = ()


@dataclass(frozen=True)
class Pruning:
    """When to stop a trial early: its own divergence, and a Ray Tune scheduler comparing trials.

    ``max_ratio=None`` turns the ratio rule off; a NaN or infinite loss stops a trial whatever the spec says.
    """

    max_ratio: float | None = 10.0
    patience: int = 1
    scheduler: str = "asha"
    grace_epochs: int = 2
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_failures: int = 2


@dataclass(frozen=True)
class Spec:
    """A validated search. Build it with :func:`load_spec`."""

    source: str
    study: Study
    data: Data
    model: Model
    training: Training
    optimizers: tuple[Optimizer, ...]
    pruning: Pruning
    resources: Resources

    def optimizer(self, name: str) -> Optimizer:
        return next(o for o in self.optimizers if o.name == name)

    def model_values(self) -> tuple[tuple[str, Value], ...]:
        """Model and training values that a trial may draw, in the order the search suggests them."""
        m = self.model
        return (
            ("layers", m.layers),
            ("units", m.units),
            ("activation", m.activation),
            ("dropout", m.dropout),
            ("batch_size", self.training.batch_size),
        )

    def searched(self) -> list[tuple[str, Value]]:
        """Every range or choice, named as Optuna names it (``adam/learning_rate``, ``units``)."""
        out = [(f"{o.name}/{k}", v) for o in self.optimizers for k, v in o.params if is_searched(v)]
        return out + [(k, v) for k, v in self.model_values() if is_searched(v)]

    def grid_size(self) -> int:
        """How many distinct configurations the conditional grid holds (ranges need a step or integer bounds)."""

        def count(value: Value) -> int:
            if isinstance(value, Choice):
                return len(value.options)
            if isinstance(value, Range):
                step = value.step if value.step is not None else 1
                return math.floor((value.high - value.low) / step + 1e-9) + 1
            return 1

        model = math.prod(count(v) for _, v in self.model_values())
        return model * sum(math.prod(count(v) for _, v in o.params) for o in self.optimizers)

    @property
    def planned_trials(self) -> int:
        """``study.trials``, or fewer when a grid holds fewer configurations."""
        if self.study.sampler == "grid":
            return min(self.study.trials, self.grid_size())
        return self.study.trials

    def describe(self) -> str:
        """One line: what is searched, on what, how many trials."""
        names = ", ".join(o.name for o in self.optimizers)
        searched = self.searched()
        params = f"{len(searched)} hyperparameter{'s' * (len(searched) != 1)}"
        if searched:
            params += " (" + ", ".join(f"{k} {v}" for k, v in searched) + ")"
        s = self.study
        return (
            f"{s.name}: optimizer {{{names}}} + {params}; {self.data.label} ({self.data.task}), "
            f"{self.training.epochs} epochs; {self.planned_trials} trial{'s' * (self.planned_trials != 1)}, "
            f"{s.sampler} sampler, {s.mode} {s.metric}"
        )

    def settings(self) -> dict[str, Any]:
        """The spec's fixed settings, flat (``study.sampler``, ``optimizers.adam.epsilon``): what every trial of
        the study shares. Searched values are left out; each trial records what it drew."""
        doc = self.to_doc()
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and not ({"low", "choice"} & set(node)):
                for key, value in node.items():
                    walk(f"{prefix}.{key}" if prefix else key, value)
            elif not isinstance(node, dict):
                flat[prefix] = node

        walk("", doc)
        return flat

    def to_doc(self) -> dict[str, Any]:
        """The spec as a YAML document of the shape :func:`load_spec` reads."""
        s, d = self.study, self.data
        data: dict[str, Any] = {"dataset": d.label if d.path else d.dataset, "validation_split": d.validation_split}
        if d.target is not None:
            data["target"] = d.target
        if d.path:
            data["task"] = d.task
        if d.dataset == "synthetic":
            data.update(n_samples=d.n_samples, n_features=d.n_features, n_classes=d.n_classes)
            if d.seed is not None:
                data["seed"] = d.seed
        study = {"name": s.name, "metric": s.metric, "mode": s.mode, "trials": s.trials}
        if s.concurrency is not None:
            study["concurrency"] = s.concurrency
        study.update(sampler=s.sampler, seed=s.seed)
        values = dict(self.model_values())
        return {
            "study": study,
            "data": data,
            "model": {k: _value_doc(values[k]) for k in ("layers", "units", "activation", "dropout")},
            "training": {
                "epochs": self.training.epochs,
                "batch_size": _value_doc(self.training.batch_size),
                "checkpoint_every": self.training.checkpoint_every,
            },
            "optimizers": {o.name: {k: _value_doc(v) for k, v in o.params} for o in self.optimizers},
            "pruning": self._pruning_doc(),
            "resources": {
                "cpus_per_trial": self.resources.cpus_per_trial,
                "gpus_per_trial": self.resources.gpus_per_trial,
                "max_failures": self.resources.max_failures,
            },
        }

    def _pruning_doc(self) -> dict[str, Any]:
        p = self.pruning
        divergence: Any = False if p.max_ratio is None else {"max_ratio": p.max_ratio, "patience": p.patience}
        return {
            "divergence": divergence,
            "scheduler": p.scheduler,
            "grace_epochs": p.grace_epochs,
            "reduction_factor": p.reduction_factor,
        }

    def fixed_at(self, params: dict[str, Any]) -> Spec:
        """This spec with every searched value fixed at ``params`` (plain names, as a trial records them)
        and only that trial's optimizer: a one-trial study named ``NAME-best`` that re-runs the configuration."""
        optimizer = self.optimizer(str(params["optimizer"]))
        fixed = Optimizer(optimizer.name, tuple((k, params.get(k, v)) for k, v in optimizer.params))
        model = {k: params.get(k, v) if is_searched(v) else v for k, v in self.model_values()}
        batch_size = model.pop("batch_size")
        return dataclasses.replace(
            self,
            study=dataclasses.replace(self.study, name=f"{self.study.name}-best", trials=1, sampler="random"),
            model=Model(**model),
            training=dataclasses.replace(self.training, batch_size=batch_size),
            optimizers=(fixed,),
        )

    def override(self, **changes: Any) -> Spec:
        """The same spec with command-line overrides applied (``trials``, ``concurrency``, ``epochs``,
        ``seed``, ``name``); ``None`` leaves a value as the spec has it."""
        study = {k: v for k, v in changes.items() if k in ("trials", "concurrency", "seed", "name") and v is not None}
        spec = self
        if "name" in study:
            _check_name(study["name"], "", "--name")
        if study:
            spec = dataclasses.replace(spec, study=dataclasses.replace(spec.study, **study))
        if changes.get("epochs") is not None:
            spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, epochs=changes["epochs"]))
        return spec


def _value_doc(value: Value) -> Any:
    if isinstance(value, Range):
        doc: dict[str, Any] = {"low": value.low, "high": value.high}
        if value.log:
            doc["log"] = True
        if value.step is not None:
            doc["step"] = value.step
        return doc
    if isinstance(value, Choice):
        return {"choice": list(value.options)}
    return value


# --------------------------------------------------------------------------------------------- tables

METRICS = {"loss": "min", "val_loss": "min", "accuracy": "max", "val_accuracy": "max", "mae": "min", "val_mae": "min"}
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "silu", "swish", "leaky_relu", "softplus", "linear")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class _Rule:
    """What one key accepts: a kind (float, int, bool, str) and a domain."""

    kind: str
    text: str = ""
    test: Callable[[Any], bool] | None = None
    options: tuple[str, ...] = ()


_POSITIVE = _Rule("float", "must be > 0", lambda v: v > 0)
_NONNEGATIVE = _Rule("float", "must be >= 0", lambda v: v >= 0)
_BELOW_ONE = _Rule("float", "must be in [0, 1)", lambda v: 0 <= v < 1)
_BOOL = _Rule("bool")
_AT_LEAST_1 = _Rule("int", "must be at least 1", lambda v: v >= 1)
_SEED = _Rule("int", "must be >= 0", lambda v: v >= 0)


def _rule_of(hyperparameter: Hyperparameter) -> _Rule:
    if hyperparameter.is_flag:
        return _BOOL
    return _Rule("float", f"must be {hyperparameter.rule()}", hyperparameter.allows)


#: What each optimizer's hyperparameters accept, from the registry (tuner.optimizers).
_OPTIMIZER_RULES = {o.name: {h.name: _rule_of(h) for h in o.hyperparameters} for o in OPTIMIZERS.values()}
_ALIASES = {"lr": "learning_rate", "sgd_momentum": "momentum"}

_MODEL_RULES = {
    "layers": _SEED,
    "units": _Rule("int", "must be >= 1", lambda v: v >= 1),
    "activation": _Rule("str", options=ACTIVATIONS),
    "dropout": _BELOW_ONE,
}
_SECTIONS = ("study", "data", "model", "training", "optimizers", "pruning", "resources")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_KIND_WORDS = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "a string"}


# --------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-5`` as a number, as YAML 1.2 does (PyYAML reads a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file.

    Args:
        path: the YAML file; messages name it as given.

    Raises:
        SpecError: the file is missing, not YAML, or breaks a rule.

    Example:
        >>> spec = load_spec("search_spaces/adam.yaml")  # doctest: +SKIP
        >>> spec.study.name  # doctest: +SKIP
        'adam-digits'
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise SpecError(source, where, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError(source, "", f"invalid YAML: {exc}") from None
    return parse_spec(doc, source=source, base=Path(path).resolve().parent)


def parse_spec(doc: Any, *, source: str = "<spec>", base: Path | None = None) -> Spec:
    """Validate an already-loaded YAML document (relative data paths resolve against ``base``)."""
    return _Reader(source, base or Path.cwd()).spec(doc)


# --------------------------------------------------------------------------------------------- reading


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _hint(word: str, known: tuple[str, ...] | list[str]) -> str:
    alias = _ALIASES.get(word)
    close = [alias] if alias in known else difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_name(name: Any, source: str, key: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        rule = "must be letters, digits, '.', '_' or '-', starting with a letter or digit"
        if source:
            raise SpecError(source, key, rule, name)
        raise UsageError(f"{key}: {rule} (got {show(name)})")
    return name


class _Reader:
    def __init__(self, source: str, base: Path) -> None:
        self.source, self.base = source, base

    def fail(self, key: str, rule: str, got: Any = ...) -> SpecError:
        return SpecError(self.source, key, rule) if got is ... else SpecError(self.source, key, rule, got)

    # -- structure

    def mapping(self, node: Any, path: str, known: tuple[str, ...], what: str) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise self.fail(path, "must be a mapping", node)
        for key in node:
            if key not in known:
                hint = _hint(str(key), known)
                listing = "" if hint else f" ({what} takes {', '.join(known)})"
                raise self.fail(_join(path, key), f"unknown key{hint}{listing}")
        return node

    # -- scalars

    def scalar(self, node: Any, path: str, rule: _Rule) -> Any:
        kind = rule.kind
        if kind == "bool":
            if not isinstance(node, bool):
                raise self.fail(path, "must be true or false", node)
            return node
        if kind == "str":
            if not isinstance(node, str):
                raise self.fail(path, "must be a string", node)
            if rule.options and node not in rule.options:
                raise self.fail(path, f"must be one of {', '.join(rule.options)}{_hint(node, rule.options)}", node)
            return node
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise self.fail(path, f"must be {_KIND_WORDS[kind]}", node)
        if kind == "int":
            if not isinstance(node, int):
                raise self.fail(path, "must be an integer", node)
        else:
            node = float(node)
        if rule.test is not None and not rule.test(node):
            raise self.fail(path, rule.text, node)
        return node

    def value(self, node: Any, path: str, rule: _Rule) -> Value:
        """A fixed scalar, a range ``{low, high, log, step}`` or a choice ``{choice: [...]}``."""
        if isinstance(node, list):
            raise self.fail(path, "must be a value, a range {low, high} or a choice {choice: [...]}", node)
        if not isinstance(node, dict):
            if node is None:
                raise self.fail(path, "must be a value, a range {low, high} or a choice {choice: [...]}", node)
            return self.scalar(node, path, rule)
        if "choice" in node:
            self.mapping(node, path, ("choice",), "a choice")
            options = node["choice"]
            if not isinstance(options, list):
                raise self.fail(_join(path, "choice"), "must be a list of values", options)
            if not options:
                raise self.fail(_join(path, "choice"), "must list at least one value", options)
            return Choice(tuple(self.scalar(o, f"{path}.choice[{i}]", rule) for i, o in enumerate(options)))
        self.mapping(node, path, ("low", "high", "log", "step", "choice"), "a range")
        if rule.kind in ("bool", "str"):
            raise self.fail(path, f"is {_KIND_WORDS[rule.kind]}, so it cannot be a range; use {{choice: [...]}}")
        missing = [k for k in ("low", "high") if k not in node]
        if missing:
            raise self.fail(path, f"a range needs low and high; {' and '.join(missing)} missing", node)
        number = _Rule(rule.kind)
        low = self.scalar(node["low"], _join(path, "low"), number)
        high = self.scalar(node["high"], _join(path, "high"), number)
        log = self.scalar(node.get("log", False), _join(path, "log"), _BOOL)
        step = node.get("step")
        if not low < high:
            raise self.fail(path, "low must be below high", shown(f"low={show(low)}, high={show(high)}"))
        if log and low <= 0:
            raise self.fail(_join(path, "low"), "a log range needs low > 0", low)
        if step is not None:
            step = self.scalar(step, _join(path, "step"), number)
            if step <= 0:
                raise self.fail(_join(path, "step"), "must be > 0", step)
            if log:
                raise self.fail(path, "step and log cannot be combined", shown(f"step={show(step)}, log=true"))
        for key, bound in (("low", low), ("high", high)):
            if rule.test is not None and not rule.test(bound):
                raise self.fail(_join(path, key), rule.text, bound)
        return Range(low, high, log=log, step=step, integer=rule.kind == "int")

    # -- sections

    def spec(self, doc: Any) -> Spec:
        if doc is None:
            raise self.fail("", "the file is empty; a spec needs at least an optimizers section")
        if not isinstance(doc, dict):
            raise self.fail("", f"the top level must be a mapping with the sections {', '.join(_SECTIONS)}", doc)
        self.mapping(doc, "", _SECTIONS, "a spec")
        if "optimizers" not in doc:
            raise self.fail("optimizers", "missing; list at least one of " + ", ".join(OPTIMIZERS))
        data = self.data(doc.get("data"))
        study = self.study(doc.get("study"), data)
        optimizers = self.optimizers(doc["optimizers"])
        model_node = self.mapping(doc.get("model"), "model", tuple(_MODEL_RULES), "model")
        model = Model(**{k: self.value(v, _join("model", k), _MODEL_RULES[k]) for k, v in model_node.items()})
        training = self.training(doc.get("training"))
        pruning = self.pruning(doc.get("pruning"))
        resources = self.resources(doc.get("resources"))
        spec = Spec(self.source, study, data, model, training, optimizers, pruning, resources)
        if study.sampler == "grid":
            for name, value in spec.searched():
                if isinstance(value, Range) and not value.integer and value.step is None:
                    key = f"optimizers.{name.replace('/', '.')}" if "/" in name else self._model_key(name)
                    raise self.fail(
                        "study.sampler",
                        f"grid needs every range to have a step; {key} is a continuous range",
                        "grid",
                    )
        return spec

    @staticmethod
    def _model_key(name: str) -> str:
        return f"training.{name}" if name == "batch_size" else f"model.{name}"

    def study(self, node: Any, data: Data) -> Study:
        node = self.mapping(node, "study", tuple(f.name for f in dataclasses.fields(Study)), "study")
        default_name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(self.source).stem).lstrip("._-") or "study"
        name = _check_name(node.get("name", default_name), self.source, "study.name")
        metric = self.scalar(node.get("metric", "val_loss"), "study.metric", _Rule("str", options=tuple(METRICS)))
        wrong = {"classification": ("mae", "val_mae"), "regression": ("accuracy", "val_accuracy")}[data.task]
        if metric in wrong:
            usable = ", ".join(m for m in METRICS if m not in wrong)
            raise self.fail(
                "study.metric",
                f"{data.label} is a {data.task} dataset; its metrics are {usable}",
                metric,
            )
        mode = self.scalar(node.get("mode", METRICS[metric]), "study.mode", _Rule("str", options=("min", "max")))
        trials = self.scalar(node.get("trials", 20), "study.trials", _AT_LEAST_1)
        concurrency = node.get("concurrency")
        if concurrency is not None:
            concurrency = self.scalar(concurrency, "study.concurrency", _AT_LEAST_1)
        sampler = self.scalar(node.get("sampler", "tpe"), "study.sampler", _Rule("str", options=tuple(SAMPLERS)))
        seed = self.scalar(node.get("seed", 0), "study.seed", _SEED)
        return Study(name, metric, mode, trials, concurrency, sampler, seed)

    def data(self, node: Any) -> Data:
        keys = ("dataset", "validation_split", "target", "task", "n_samples", "n_features", "n_classes", "seed")
        node = self.mapping(node, "data", keys, "data")
        dataset = self.scalar(node.get("dataset", "digits"), "data.dataset", _Rule("str"))
        split = self.scalar(
            node.get("validation_split", 0.2),
            "data.validation_split",
            _Rule("float", "must be in (0, 1)", lambda v: 0 < v < 1),
        )
        kind, _, file = dataset.partition(":")
        only = {
            "target": ("csv",),
            "task": ("csv", "npz"),
            "n_samples": ("synthetic",),
            "n_features": ("synthetic",),
            "n_classes": ("synthetic",),
            "seed": ("synthetic",),
        }
        for key, kinds in only.items():
            if key in node and kind not in kinds:
                usable = " and ".join(f"{k}:PATH" if k != "synthetic" else k for k in kinds)
                raise self.fail(f"data.{key}", f"only applies to {usable} datasets", dataset)
        if kind in ("csv", "npz") and file:
            return self.file_data(node, kind, file, split)
        if dataset not in DATASETS:
            known = (*DATASETS, "csv:PATH", "npz:PATH")
            rule = f"unknown dataset{_hint(dataset, known)} (known: {', '.join(known)})"
            raise self.fail("data.dataset", rule, dataset)
        if dataset != "synthetic":
            return Data(dataset, DATASETS[dataset].task, split)
        n_samples = self.scalar(
            node.get("n_samples", 1000), "data.n_samples", _Rule("int", "must be at least 10", lambda v: v >= 10)
        )
        n_features = self.scalar(node.get("n_features", 20), "data.n_features", _AT_LEAST_1)
        n_classes = self.scalar(
            node.get("n_classes", 2), "data.n_classes", _Rule("int", "must be at least 2", lambda v: v >= 2)
        )
        if n_classes > 2**n_features:
            raise self.fail("data.n_classes", f"must be at most 2**n_features = {2**n_features}", n_classes)
        seed = node.get("seed")
        if seed is not None:
            seed = self.scalar(seed, "data.seed", _SEED)
        return Data(
            "synthetic",
            "classification",
            split,
            n_samples=n_samples,
            n_features=n_features,
            n_classes=n_classes,
            seed=seed,
        )

    def file_data(self, node: dict[str, Any], kind: str, file: str, split: float) -> Data:
        path = (self.base / file).resolve()
        if not path.is_file():
            raise self.fail("data.dataset", f"file not found: {path}", f"{kind}:{file}")
        task = node.get("task")
        if task is not None:
            task = self.scalar(task, "data.task", _Rule("str", options=TASKS))
        target = None
        if kind == "csv":
            if "target" not in node:
                columns = datamod.csv_columns(path)
                rule = f"a csv dataset needs the name of its target column (columns: {', '.join(columns)})"
                raise self.fail("data.target", rule)
            target = self.scalar(node["target"], "data.target", _Rule("str"))
        try:
            task = datamod.resolve_task(kind, path, target, task)
        except datamod.DataFileError as exc:
            raise self.fail(exc.key, exc.rule, exc.got) from None
        return Data(kind, task, split, path=str(path), target=target)

    def optimizers(self, node: Any) -> tuple[Optimizer, ...]:
        if not isinstance(node, dict):
            raise self.fail("optimizers", f"must be a mapping with one or more of {', '.join(OPTIMIZERS)}", node)
        if not node:
            raise self.fail("optimizers", f"must name at least one optimizer ({', '.join(OPTIMIZERS)})", node)
        out = []
        for name, params in node.items():
            path = _join("optimizers", name)
            if name not in OPTIMIZERS:
                known = tuple(OPTIMIZERS)
                raise self.fail(path, f"unknown optimizer{_hint(str(name), known)} (known: {', '.join(known)})")
            rules = _OPTIMIZER_RULES[name]
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise self.fail(path, "must be a mapping of hyperparameters (or empty for Keras' defaults)", params)
            values = []
            for key, raw in params.items():
                if key not in rules:
                    takes = f"({name} takes {', '.join(rules)})"
                    if any(key in other for other in _OPTIMIZER_RULES.values()):
                        raise self.fail(_join(path, key), f"{name} does not take {key} {takes}")
                    raise self.fail(_join(path, key), f"unknown hyperparameter{_hint(str(key), tuple(rules))} {takes}")
                values.append((key, self.value(raw, _join(path, key), rules[key])))
            out.append(Optimizer(name, tuple(values)))
        return tuple(out)

    def training(self, node: Any) -> Training:
        node = self.mapping(node, "training", ("epochs", "batch_size", "checkpoint_every"), "training")
        epochs = node.get("epochs", 20)
        if isinstance(epochs, dict):
            rule = "must be a fixed integer; epochs are the budget, not a hyperparameter"
            raise self.fail("training.epochs", rule, epochs)
        epochs = self.scalar(epochs, "training.epochs", _AT_LEAST_1)
        batch = self.value(node.get("batch_size", 64), "training.batch_size", _AT_LEAST_1)
        every = self.scalar(node.get("checkpoint_every", 1), "training.checkpoint_every", _AT_LEAST_1)
        return Training(epochs, batch, every)

    def pruning(self, node: Any) -> Pruning:
        keys = ("divergence", "scheduler", "grace_epochs", "reduction_factor")
        node = self.mapping(node, "pruning", keys, "pruning")
        divergence = node.get("divergence", True)
        max_ratio: float | None = 10.0
        patience = 1
        if divergence is False:
            max_ratio = None
        elif isinstance(divergence, dict):
            rule = self.mapping(divergence, "pruning.divergence", ("max_ratio", "patience"), "pruning.divergence")
            max_ratio = self.scalar(
                rule.get("max_ratio", 10.0),
                "pruning.divergence.max_ratio",
                _Rule("float", "must be > 1", lambda v: v > 1),
            )
            patience = self.scalar(rule.get("patience", 1), "pruning.divergence.patience", _AT_LEAST_1)
        elif divergence is not True:
            raise self.fail("pruning.divergence", "must be true, false or {max_ratio, patience}", divergence)
        scheduler = self.scalar(
            node.get("scheduler", "asha"),
            "pruning.scheduler",
            _Rule("str", options=tuple(SCHEDULERS)),
        )
        grace = self.scalar(node.get("grace_epochs", 2), "pruning.grace_epochs", _AT_LEAST_1)
        factor = self.scalar(
            node.get("reduction_factor", 3), "pruning.reduction_factor", _Rule("float", "must be > 1", lambda v: v > 1)
        )
        return Pruning(max_ratio, patience, scheduler, grace, factor)

    def resources(self, node: Any) -> Resources:
        node = self.mapping(node, "resources", ("cpus_per_trial", "gpus_per_trial", "max_failures"), "resources")
        cpus = self.scalar(node.get("cpus_per_trial", 1), "resources.cpus_per_trial", _POSITIVE)
        gpus = self.scalar(node.get("gpus_per_trial", 0), "resources.gpus_per_trial", _NONNEGATIVE)
        retries = self.scalar(node.get("max_failures", 2), "resources.max_failures", _SEED)
        return Resources(cpus, gpus, retries)
