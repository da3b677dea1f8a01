"""A search written in YAML, declared as frozen pydantic models and validated into them.

The models below are the schema: each key, its type, its bounds and its default are written there once. Every
error names the file, the key path, the rule and the value found::

    search_spaces/x.yaml: optimizers.adam.beta_1: low must be below high (got low=0.99, high=0.9)

:func:`_located` turns pydantic's first error into that line; the rules themselves raise :func:`_broken`.

This module imports neither TensorFlow, Ray, Optuna nor MLflow, so that ``tuner validate`` stays fast.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Strict,
    Tag,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    create_model,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tuner import data as datamod
from tuner.data import DATASETS, Data
from tuner.errors import SpecError, UsageError, show, shown
from tuner.optimizers import OPTIMIZERS, Bounds, OptimizerType
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

METRICS = {"loss": "min", "val_loss": "min", "accuracy": "max", "val_accuracy": "max", "mae": "min", "val_mae": "min"}
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "silu", "swish", "leaky_relu", "softplus", "linear")
TASKS = ("classification", "regression")
_ALIASES = {"lr": "learning_rate", "sgd_momentum": "momentum"}
#: The sections of a spec, in the order a file usually lists them (and :meth:`Spec.to_doc` writes them).
_SECTIONS = ("study", "data", "model", "training", "optimizers", "pruning", "resources")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_RULE = "must be letters, digits, '.', '_' or '-', starting with a letter or digit"
_NOTHING: Any = object()


def _hint(word: str, known: tuple[str, ...] | list[str]) -> str:
    alias = _ALIASES.get(word)
    close = [alias] if alias in known else difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _broken(rule: str, got: Any = _NOTHING, *, key: str = "", path: str = "") -> PydanticCustomError:
    """A rule a value breaks, for :func:`_located` to print. ``key`` extends the error's location (a model's
    check naming one of its own keys); ``path`` replaces it (a check naming another section's key)."""
    context: dict[str, Any] = {"rule": rule, "key": key, "path": path}
    if got is not _NOTHING:
        context["got"] = got
    return PydanticCustomError("tuner", "{rule}", context)


# --------------------------------------------------------------------------------------------- scalars

_Int = Annotated[int, Strict()]
_Float = Annotated[float, Strict(), AllowInfNan(False)]  # strict still takes an int (1 -> 1.0), never a bool
_Bool = Annotated[bool, Strict()]
_Str = Annotated[str, Strict()]
_KINDS: dict[type, Any] = {int: _Int, float: _Float, bool: _Bool, str: _Str}


_Check = Callable[[Any], Any]


def _bounded(kind: type, bounds: Bounds) -> _Check:
    """A check that a number (``kind``: int or float) is within ``bounds``."""
    text = f"must be {bounds.rule(integer=kind is int)}"

    def check(value: float) -> float:
        if not bounds.allows(value):
            raise _broken(text, value)
        return value

    return check


def _among(options: tuple[str, ...]) -> _Check:
    """A check that a string is one of ``options``."""

    def check(value: str) -> str:
        if value not in options:
            raise _broken(f"must be one of {', '.join(options)}{_hint(value, options)}", value)
        return value

    return check


def _within(kind: type, bounds: Bounds) -> Any:
    return Annotated[_KINDS[kind], AfterValidator(_bounded(kind, bounds))]


def _one_of(options: tuple[str, ...]) -> Any:
    return Annotated[_Str, AfterValidator(_among(options))]


def _valid_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise _broken(_NAME_RULE, name)
    return name


_AtLeast1 = _within(int, Bounds(1))
_Natural = _within(int, Bounds(0))
_Name = Annotated[Any, AfterValidator(_valid_name)]


# --------------------------------------------------------------------------------------------- models


class _Frozen(BaseModel):
    """A mapping in the spec: frozen, no unknown keys. The class variables say how errors describe it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: How an unknown-key error names this mapping: ``(resources takes cpus_per_trial, ...)``.
    label: ClassVar[str] = "this mapping"
    #: The rule for a value that is not a mapping at all.
    shape: ClassVar[str] = "must be a mapping"
    #: Whether an empty value (``model:``) stands for the empty mapping: every key at its default.
    empty_is_default: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        """The mapping's own rules, before its keys' (as a reader checks a typo before the values around it):
        a mapping, only known keys, none of the required ones missing."""
        if value is None and cls.empty_is_default:
            value = {}
        value = cls._prepare(value, info.context or {})
        if isinstance(value, BaseModel):
            return value
        if not isinstance(value, dict):
            raise _broken(cls.shape, value)
        _known_keys(cls, value)
        missing = [k for k, field in cls.model_fields.items() if field.is_required() and k not in value]
        if missing:
            raise cls.missing(missing, value)
        return value

    @classmethod
    def _prepare(cls, value: Any, context: dict[str, Any]) -> Any:
        """What a subclass checks or fills in first (``study.name`` from the file's name, for one)."""
        return value

    @classmethod
    def unknown_key(cls, key: str) -> str:
        known = tuple(cls.model_fields)
        hint = _hint(key, known)
        return f"unknown key{hint}" if hint else f"unknown key ({cls.label} takes {', '.join(known)})"

    @classmethod
    def missing(cls, keys: list[str], value: dict[str, Any]) -> PydanticCustomError:
        return _broken("missing", key=keys[0])


def _known_keys(model: type[_Frozen], value: dict[Any, Any]) -> None:
    for key in value:
        if not isinstance(key, str) or key not in model.model_fields:
            raise _broken(model.unknown_key(str(key)), key=str(key))


class _Section(_Frozen):
    """A section, or a mapping within one, that may be left empty (``model:``)."""

    empty_is_default: ClassVar[bool] = True


_Kind = TypeVar("_Kind")  # the type of a range's ends, or of a choice's options


class Range(_Frozen, Generic[_Kind]):
    """A range to search: ``{low, high}`` with optional ``log`` and ``step``. Integer when its ends are.

    Its ends obey the hyperparameter's own rule too; :func:`_value` checks that once the range is consistent.
    """

    label: ClassVar[str] = "a range"
    low: _Kind
    high: _Kind
    log: _Bool = Field(False, exclude_if=lambda log: not log)
    step: _Kind | None = Field(None, exclude_if=lambda step: step is None)

    @classmethod
    def missing(cls, keys: list[str], value: dict[str, Any]) -> PydanticCustomError:
        return _broken(f"a range needs low and high; {' and '.join(keys)} missing", value)

    @model_validator(mode="after")
    def _consistent(self) -> Range[_Kind]:
        low, high, step = self.low, self.high, self.step
        if not low < high:  # type: ignore[operator]
            raise _broken("low must be below high", shown(f"low={show(low)}, high={show(high)}"))
        if self.log and low <= 0:  # type: ignore[operator]
            raise _broken("a log range needs low > 0", low, key="low")
        if step is not None:
            if not step > 0:  # type: ignore[operator]
                raise _broken("must be > 0", step, key="step")
            if self.log:
                raise _broken("step and log cannot be combined", shown(f"step={show(step)}, log=true"))
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and not isinstance(self.low, bool)

    def __repr_name__(self) -> str:
        return "Range"  # not Range[Annotated[float, Strict(strict=True), ...]]

    def __str__(self) -> str:
        extra = " log" if self.log else f" step {self.step:g}" if self.step is not None else ""
        return f"[{self.low:g}, {self.high:g}]{extra}"


def _a_list(options: Any) -> Any:
    if not isinstance(options, (list, tuple)):  # a YAML set (!!set) has no order to draw from
        raise _broken("must be a list of values", options)
    return options


class Choice(_Frozen, Generic[_Kind]):
    """A choice to search: ``{choice: [...]}``."""

    label: ClassVar[str] = "a choice"
    choice: Annotated[tuple[_Kind, ...], BeforeValidator(_a_list)] = Field(min_length=1)

    @property
    def options(self) -> tuple[Any, ...]:
        return self.choice

    @field_serializer("choice")
    def _as_list(self, options: tuple[Any, ...]) -> list[Any]:
        return list(options)  # YAML's safe dumper writes lists, not tuples

    def __repr_name__(self) -> str:
        return "Choice"

    def __str__(self) -> str:
        return "{" + ", ".join(show(o) for o in self.options) + "}"


# One class per kind, made here at the top level, where pydantic registers each under its name in this module,
# so that the standard pickle finds them (Ray ships specs to workers; a resumed launch reads one back).
_Ints = Range[_Int]
_Floats = Range[_Float]
_RANGES: dict[type, Any] = {int: _Ints, float: _Floats}
_IntChoice = Choice[_Int]
_FloatChoice = Choice[_Float]
_BoolChoice = Choice[_Bool]
_StrChoice = Choice[_Str]
_CHOICES: dict[type, Any] = {int: _IntChoice, float: _FloatChoice, bool: _BoolChoice, str: _StrChoice}

#: A hyperparameter as the spec gives it: fixed (a scalar), a range or a choice.
Value = Range[Any] | Choice[Any] | bool | int | float | str


def is_searched(value: Value) -> bool:
    return isinstance(value, (Range, Choice))


def _shape_of(value: Any) -> str | None:
    """Which form a value takes (the tag of :func:`_value`'s union); ``None`` for a form none accepts."""
    if isinstance(value, Range) or (isinstance(value, dict) and "choice" not in value):
        return "(range)"
    if isinstance(value, (Choice, dict)):
        return "(choice)"
    return None if value is None or isinstance(value, list) else "(value)"


def _each(check: _Check, keys: Callable[[Any], list[tuple[str, Any]]]) -> Callable[[Any], Any]:
    """``check`` applied to each of a range's ends or a choice's options, the error naming which."""

    def apply(value: Any) -> Any:
        for key, item in keys(value):
            try:
                check(item)
            except PydanticCustomError as exc:
                broken = exc.context or {}
                raise _broken(broken["rule"], broken["got"], key=key) from None
        return value

    return apply


def _ends(value: Range[Any]) -> list[tuple[str, Any]]:
    return [("low", value.low), ("high", value.high)]


def _options(value: Choice[Any]) -> list[tuple[str, Any]]:
    return [(f"choice[{i}]", option) for i, option in enumerate(value.options)]


def _value(kind: type, check: _Check | None = None) -> Any:
    """A fixed value of ``kind`` passing ``check``, a range of them (numbers only) or a choice of them."""
    fixed: Any = Annotated[_KINDS[kind], AfterValidator(check)] if check else _KINDS[kind]
    choice: Any = Annotated[_CHOICES[kind], AfterValidator(_each(check, _options))] if check else _CHOICES[kind]
    if kind in _RANGES:
        ranged: Any = Annotated[_RANGES[kind], AfterValidator(_each(check, _ends))] if check else _RANGES[kind]
    else:
        word = "true or false" if kind is bool else "a string"

        def no_range(value: dict[Any, Any]) -> Any:
            _known_keys(Range, value)  # a typo in a key first, as for a range
            raise _broken(f"is {word}, so it cannot be a range; use {{choice: [...]}}")

        ranged = Annotated[dict, BeforeValidator(no_range)]
    return Annotated[
        Annotated[ranged, Tag("(range)")] | Annotated[choice, Tag("(choice)")] | Annotated[fixed, Tag("(value)")],
        Discriminator(
            _shape_of,
            custom_error_type="tuner_shape",
            custom_error_message="must be a value, a range {low, high} or a choice {choice: [...]}",
        ),
    ]


class Study(_Section):
    label: ClassVar[str] = "study"
    name: _Name  # default: the file's name (see _prepare)
    metric: _one_of(tuple(METRICS)) = "val_loss"  # type: ignore[valid-type]
    mode: _one_of(("min", "max"))  # type: ignore[valid-type]  # default: the metric's direction
    trials: _AtLeast1 = 20  # type: ignore[valid-type]
    concurrency: _AtLeast1 | None = Field(None, exclude_if=lambda c: c is None)  # type: ignore[valid-type]
    sampler: _one_of(tuple(SAMPLERS)) = "tpe"  # type: ignore[valid-type]
    seed: _Natural = 0  # type: ignore[valid-type]

    @classmethod
    def _prepare(cls, value: Any, context: dict[str, Any]) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        if "name" not in value:
            stem = Path(context.get("source", "study")).stem
            value["name"] = re.sub(r"[^A-Za-z0-9._-]", "-", stem).lstrip("._-") or "study"
        metric = value.get("metric", "val_loss")
        if "mode" not in value and isinstance(metric, str) and metric in METRICS:
            value["mode"] = METRICS[metric]
        return value


#: Keys of ``data`` that only some datasets take.
_ONLY_FOR = {
    "target": ("csv",),
    "task": ("csv", "npz"),
    "n_samples": ("synthetic",),
    "n_features": ("synthetic",),
    "n_classes": ("synthetic",),
    "seed": ("synthetic",),
}


class DataSection(_Section):
    """The ``data`` section as written; a spec holds it interpreted, as :class:`tuner.data.Data`."""

    label: ClassVar[str] = "data"
    dataset: _Str = "digits"
    validation_split: _within(float, Bounds(0.0, 1.0, True, True)) = 0.2  # type: ignore[valid-type]
    target: _Str | None = None
    task: _one_of(TASKS) | None = None  # type: ignore[valid-type]
    n_samples: _within(int, Bounds(datamod.MIN_EXAMPLES)) = 1000  # type: ignore[valid-type]
    n_features: _AtLeast1 = 20  # type: ignore[valid-type]
    n_classes: _within(int, Bounds(2)) = 2  # type: ignore[valid-type]
    seed: _Natural | None = None  # type: ignore[valid-type]

    @field_validator(*_ONLY_FOR, mode="before")
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        dataset, kinds = info.data.get("dataset"), _ONLY_FOR[str(info.field_name)]
        if isinstance(dataset, str) and dataset.partition(":")[0] not in kinds:
            usable = " and ".join(f"{k}:PATH" if k != "synthetic" else k for k in kinds)
            raise _broken(f"only applies to {usable} datasets", dataset)
        return value


def _interpret(section: DataSection, info: ValidationInfo) -> Data:
    """What the ``data`` section names: a built-in dataset, or a user's file (read to find its task)."""
    kind, _, file = section.dataset.partition(":")
    common = dict(
        validation_split=section.validation_split,
        n_samples=section.n_samples,
        n_features=section.n_features,
        n_classes=section.n_classes,
        seed=section.seed,
    )
    if kind in ("csv", "npz") and file:
        path = (Path((info.context or {}).get("base") or Path.cwd()) / file).resolve()
        if not path.is_file():
            raise _broken(f"file not found: {path}", section.dataset, key="dataset")
        try:
            if kind == "csv" and section.target is None:
                columns = ", ".join(datamod.csv_columns(path))
                rule = f"a csv dataset needs the name of its target column (columns: {columns})"
                raise _broken(rule, key="target")
            task = datamod.resolve_task(kind, path, section.target, section.task)
        except datamod.DataFileError as exc:
            raise _broken(exc.rule, exc.got, path=exc.key) from None
        return Data(kind, task, path=str(path), target=section.target, **common)
    if section.dataset not in DATASETS:
        known = (*DATASETS, "csv:PATH", "npz:PATH")
        rule = f"unknown dataset{_hint(section.dataset, known)} (known: {', '.join(known)})"
        raise _broken(rule, section.dataset, key="dataset")
    if section.dataset == "synthetic" and math.log2(section.n_classes) > section.n_features:  # not 2**n: n may be huge
        raise _broken(f"must be at most 2**n_features = {2**section.n_features}", section.n_classes, key="n_classes")
    return Data(section.dataset, DATASETS[section.dataset].task, path=None, target=None, **common)


def _data_doc(data: Data) -> dict[str, Any]:
    """The ``data`` section that reads back as ``data`` (a file's path made absolute)."""
    doc: dict[str, Any] = {"dataset": data.label if data.path else data.dataset}
    doc["validation_split"] = data.validation_split
    if data.target is not None:
        doc["target"] = data.target
    if data.path:
        doc["task"] = data.task
    if data.dataset == "synthetic":
        doc.update(n_samples=data.n_samples, n_features=data.n_features, n_classes=data.n_classes)
        if data.seed is not None:
            doc["seed"] = data.seed
    return doc


class Model(_Section):
    label: ClassVar[str] = "model"
    layers: _value(int, _bounded(int, Bounds(0))) = 1  # type: ignore[valid-type]
    units: _value(int, _bounded(int, Bounds(1))) = 128  # type: ignore[valid-type]
    activation: _value(str, _among(ACTIVATIONS)) = "relu"  # type: ignore[valid-type]
    dropout: _value(float, _bounded(float, Bounds(0.0, 1.0, high_open=True))) = 0.0  # type: ignore[valid-type]


def _budget(value: Any) -> Any:
    if isinstance(value, dict):
        raise _broken("must be a fixed integer; epochs are the budget, not a hyperparameter", value)
    return value


class Training(_Section):
    label: ClassVar[str] = "training"
    epochs: Annotated[_AtLeast1, BeforeValidator(_budget)] = 20  # type: ignore[valid-type]
    batch_size: _value(int, _bounded(int, Bounds(1))) = 64  # type: ignore[valid-type]
    # A trial checkpoints once checkpoint_interval_s seconds of training have passed since its last checkpoint
    # (checked after each epoch: a crash costs about that much, plus the epoch under way), or every
    # checkpoint_every epochs when that is given; always after its last epoch.
    checkpoint_every: _AtLeast1 | None = None  # type: ignore[valid-type]
    checkpoint_interval_s: _within(float, Bounds(0.0, low_open=True)) = 10.0  # type: ignore[valid-type]


# -- optimizers: one model per registered optimizer, its keys and bounds read from the registry


class _Hyperparameters(_Section):
    """The hyperparameters a spec sets for one optimizer; those it leaves out keep Keras' defaults."""

    optimizer: ClassVar[OptimizerType]
    shape: ClassVar[str] = "must be a mapping of hyperparameters (or empty for Keras' defaults)"

    @classmethod
    def unknown_key(cls, key: str) -> str:
        name, known = cls.optimizer.name, tuple(cls.model_fields)
        takes = f"({name} takes {', '.join(known)})"
        if any(key in other.model_fields for other in _HYPERPARAMETERS.values()):
            return f"{name} does not take {key} {takes}"
        return f"unknown hyperparameter{_hint(key, known)} {takes}"


def _hyperparameters_of(optimizer: OptimizerType) -> type[_Hyperparameters]:
    fields: dict[str, Any] = {}
    for h in optimizer.hyperparameters:
        kind = _value(bool) if h.bounds is None else _value(float, _bounded(float, h.bounds))
        fields[h.name] = (kind, None)  # None: not set (a null in the file is refused, as any missing value)
    model = create_model(f"{optimizer.keras_class}Hyperparameters", __base__=_Hyperparameters, **fields)
    model.optimizer = optimizer
    return model


_HYPERPARAMETERS = {name: _hyperparameters_of(o) for name, o in OPTIMIZERS.items()}


class _OptimizersBase(_Frozen):
    shape: ClassVar[str] = f"must be a mapping with one or more of {', '.join(OPTIMIZERS)}"

    @classmethod
    def unknown_key(cls, key: str) -> str:
        known = tuple(OPTIMIZERS)
        return f"unknown optimizer{_hint(key, known)} (known: {', '.join(known)})"

    @classmethod
    def _prepare(cls, value: Any, context: dict[str, Any]) -> Any:
        if value == {}:
            raise _broken(f"must name at least one optimizer ({', '.join(OPTIMIZERS)})", value)
        return value


_Optimizers = create_model(  # type: ignore[call-overload]
    "Optimizers", __base__=_OptimizersBase, **{name: (model, None) for name, model in _HYPERPARAMETERS.items()}
)


@dataclass(frozen=True)
class Optimizer:
    """One optimizer type and the hyperparameters the spec sets for it, in the spec's order."""

    name: str
    params: tuple[tuple[str, Value], ...] = ()


def _in_order(value: Any, validate: Any) -> tuple[Optimizer, ...]:
    """The validated optimizers, in the order the file lists them (the search draws in that order)."""
    section = validate(value)
    return tuple(
        Optimizer(name, tuple((key, getattr(getattr(section, name), key)) for key in (params or {})))
        for name, params in value.items()
    )


def _optimizers_doc(optimizers: tuple[Optimizer, ...]) -> dict[str, Any]:
    return {o.name: dict(o.params) for o in optimizers}


# -- pruning and resources


class DivergenceSettings(_Frozen):
    """``pruning.divergence`` as a mapping: the settings of :class:`tuner.pruning.Divergence`'s ratio rule."""

    label: ClassVar[str] = "pruning.divergence"
    max_ratio: _within(float, Bounds(1.0, low_open=True)) = 10.0  # type: ignore[valid-type]
    patience: _AtLeast1 = 1  # type: ignore[valid-type]


def _divergence_form(value: Any) -> str | None:
    if isinstance(value, bool):
        return "(switch)"
    return "(rule)" if isinstance(value, (dict, DivergenceSettings)) else None


def _settings_in_effect(value: bool | DivergenceSettings) -> DivergenceSettings | bool:
    """``true`` is the default settings, written out, so that a study records the values it used."""
    return DivergenceSettings() if value is True else value


class Pruning(_Section):
    """When to stop a trial early: its own divergence, and a Ray Tune scheduler comparing trials.

    ``divergence: false`` turns the ratio rule off (``max_ratio`` is then ``None``); a NaN or infinite loss stops a
    trial whatever the spec says.
    """

    label: ClassVar[str] = "pruning"
    divergence: Annotated[
        Annotated[_Bool, Tag("(switch)")] | Annotated[DivergenceSettings, Tag("(rule)")],
        Discriminator(
            _divergence_form,
            custom_error_type="tuner_shape",
            custom_error_message="must be true, false or {max_ratio, patience}",
        ),
        AfterValidator(_settings_in_effect),
    ] = DivergenceSettings()
    scheduler: _one_of(tuple(SCHEDULERS)) = "asha"  # type: ignore[valid-type]
    grace_epochs: _AtLeast1 = 2  # type: ignore[valid-type]
    reduction_factor: _within(float, Bounds(1.0, low_open=True)) = 3.0  # type: ignore[valid-type]

    @property
    def max_ratio(self) -> float | None:
        return self.divergence.max_ratio if isinstance(self.divergence, DivergenceSettings) else None

    @property
    def patience(self) -> int:
        settings = self.divergence if isinstance(self.divergence, DivergenceSettings) else DivergenceSettings()
        return settings.patience


class Resources(_Section):
    label: ClassVar[str] = "resources"
    cpus_per_trial: _within(float, Bounds(0.0, low_open=True)) = 1.0  # type: ignore[valid-type]
    gpus_per_trial: _within(float, Bounds(0.0)) = 0.0  # type: ignore[valid-type]
    max_failures: _Natural = 2  # type: ignore[valid-type]


# --------------------------------------------------------------------------------------------- the spec


class Spec(_Frozen):
    """A validated search. Build it with :func:`load_spec`; :meth:`to_doc` writes it back."""

    label: ClassVar[str] = "a spec"
    shape: ClassVar[str] = f"the top level must be a mapping with the sections {', '.join(_SECTIONS)}"
    # Validated in this order, so that the first error reported is the first a reader meets in a usual file.
    if TYPE_CHECKING:  # what the fields hold, once validated
        data: Data
        study: Study
        optimizers: tuple[Optimizer, ...]
    else:  # what they read: the data section, interpreted; the optimizers, kept in the file's order
        data: Annotated[DataSection, AfterValidator(_interpret), PlainSerializer(_data_doc)]
        study: Study
        optimizers: Annotated[_Optimizers, WrapValidator(_in_order), PlainSerializer(_optimizers_doc)]
    model: Model
    training: Training
    pruning: Pruning
    resources: Resources
    _source: str = PrivateAttr("<spec>")

    @classmethod
    def unknown_key(cls, key: str) -> str:
        hint = _hint(key, _SECTIONS)
        return f"unknown key{hint}" if hint else f"unknown key ({cls.label} takes {', '.join(_SECTIONS)})"

    @classmethod
    def missing(cls, keys: list[str], value: dict[str, Any]) -> PydanticCustomError:
        return _broken("missing; list at least one of " + ", ".join(OPTIMIZERS), key="optimizers")

    @classmethod
    def _prepare(cls, value: Any, context: dict[str, Any]) -> Any:
        if value is None:
            raise _broken("the file is empty; a spec needs at least an optimizers section")
        if not isinstance(value, dict):
            return value
        # An absent section is validated as an empty one, so that each default is the section's own.
        return {**{k: None for k in cls.model_fields if k != "optimizers"}, **value}

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Spec:
        self._source = (info.context or {}).get("source", "<spec>")
        metric, task = self.study.metric, self.data.task
        wrong = {"classification": ("mae", "val_mae"), "regression": ("accuracy", "val_accuracy")}[task]
        if metric in wrong:
            usable = ", ".join(m for m in METRICS if m not in wrong)
            raise _broken(
                f"{self.data.label} is a {task} dataset; its metrics are {usable}", metric, path="study.metric"
            )
        if self.study.sampler == "grid":
            for name, value in self.searched():
                if isinstance(value, Range) and not value.integer and value.step is None:
                    key = f"optimizers.{name.replace('/', '.')}" if "/" in name else self._key_of(name)
                    rule = f"grid needs every range to have a step; {key} is a continuous range"
                    raise _broken(rule, "grid", path="study.sampler")
        return self

    @staticmethod
    def _key_of(name: str) -> str:
        return f"training.{name}" if name == "batch_size" else f"model.{name}"

    @property
    def source(self) -> str:
        """The file the spec was read from, as messages name it."""
        return self._source

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

        model: int = math.prod([count(v) for _, v in self.model_values()])
        return model * sum(math.prod([count(v) for _, v in o.params]) for o in self.optimizers)

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
        doc = self.model_dump(mode="python")
        return {section: doc[section] for section in _SECTIONS}

    def fixed_at(self, params: dict[str, Any]) -> Spec:
        """This spec with every searched value fixed at ``params`` (plain names, as a trial records them)
        and only that trial's optimizer: a one-trial study named ``NAME-best`` that re-runs the configuration."""
        optimizer = self.optimizer(str(params["optimizer"]))
        fixed = Optimizer(optimizer.name, tuple((k, params.get(k, v)) for k, v in optimizer.params))
        model = {k: params.get(k, v) if is_searched(v) else v for k, v in self.model_values()}
        batch_size = model.pop("batch_size")
        return self.model_copy(
            update={
                "study": self.study.model_copy(
                    update={"name": f"{self.study.name}-best", "trials": 1, "sampler": "random"}
                ),
                "model": self.model.model_copy(update=model),
                "training": self.training.model_copy(update={"batch_size": batch_size}),
                "optimizers": (fixed,),
            }
        )

    def override(self, **changes: Any) -> Spec:
        """The same spec with command-line overrides applied (``trials``, ``concurrency``, ``epochs``,
        ``seed``, ``name``), each checked by the spec's own rule; ``None`` leaves a value as the spec has it.

        Raises:
            UsageError: an override breaks its rule, named as the option: ``--name: must be ... (got 'a b')``.
        """
        given = {k: v for k, v in changes.items() if v is not None}
        sections = {"study": ("trials", "concurrency", "seed", "name"), "training": ("epochs",)}
        update: dict[str, Any] = {}
        for section, keys in sections.items():
            now = getattr(self, section)
            new = {k: given[k] for k in keys if k in given}
            if not new:
                continue
            try:
                update[section] = type(now).model_validate({**now.model_dump(), **new})
            except ValidationError as exc:
                key, rule, got = _first_error(exc)
                raise UsageError(
                    f"--{key.rpartition('.')[2]}: {rule}" + ("" if got is _NOTHING else f" (got {show(got)})")
                ) from None
        return self.model_copy(update=update)


# --------------------------------------------------------------------------------------------- errors

#: The rule for each of pydantic's own error types that a spec can meet (the rest are tuner's, see _broken).
_RULES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "finite_number": "must be a finite number",
    "too_short": "must list at least one value",
}


def _first_error(exc: ValidationError) -> tuple[str, str, Any]:
    """The first error, as (key path, rule, value found or ``_NOTHING``). Pydantic lists errors in the order
    it validates, which is the order of the sections and keys in the models."""
    first = exc.errors(include_url=False)[0]
    kind, context = first["type"], first.get("ctx") or {}
    if kind == "tuner":
        if context.get("path"):
            return str(context["path"]), context["rule"], context.get("got", _NOTHING)
        key = (context["key"],) if context.get("key") else ()
        return _dotted((*first["loc"], *key)), context["rule"], context.get("got", _NOTHING)
    rule = first["msg"] if kind == "tuner_shape" else _RULES.get(kind, first["msg"][:1].lower() + first["msg"][1:])
    return _dotted(first["loc"]), rule, first["input"]


def _dotted(loc: tuple[Any, ...]) -> str:
    """``('model', 'activation', '(choice)', 'choice[1]')`` -> ``model.activation.choice[1]``: without the tags
    of :func:`_value`'s union."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.fullmatch(r"\(\w+\)", str(part)):
            out = f"{out}.{part}" if out else str(part)
    return out


def _located(exc: ValidationError, source: str) -> SpecError:
    key, rule, got = _first_error(exc)
    return SpecError(source, key, rule) if got is _NOTHING else SpecError(source, key, rule, got)


# --------------------------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-5`` as a number, as YAML 1.2 does (PyYAML reads a string), and refuses
    a key given twice in one mapping (PyYAML keeps the last value, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *defaults' merges keys that the mapping's own may then override
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: PyYAML's own error names it
            if key in seen:
                problem = f"key {show(key)} is given twice in one mapping"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = raw.count(b"\n", 0, exc.start) + 1, exc.start - raw.rfind(b"\n", 0, exc.start)
        rule = f"must be UTF-8 text; byte 0x{raw[exc.start]:02x} is not"
        raise SpecError(source, f"line {line}, column {column}", rule) from None
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
    try:
        return Spec.model_validate(doc, context={"source": source, "base": base or Path.cwd()})
    except ValidationError as exc:
        raise _located(exc, source) from None
