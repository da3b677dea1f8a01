"""Record real training curves for the labelled set in ``recorded.json``.

Run ``python tests/curves/record.py DATASET SEED > /tmp/curves.json``: it trains an MLP on the dataset with
each optimizer setting below for 15 epochs (tuner's own trainer, NaN stops a run, no other divergence rule)
and prints every curve with an empty label. A person then labels each curve by looking at it
(``python tests/curves/record.py --plot /tmp/curves.json`` draws them), as the lecture on learning rates
teaches, and adds the best final validation loss of the set. ``recorded.json`` holds four such sets
(digits seed 0 and 3, wine seed 1, breast_cancer seed 2); tests/test_pruning.py reads it.

None of those settings stalls, so they hold no ``plateau``. ``python tests/curves/record.py --stalling DATASET
SEED`` records the settings of ``STALLING`` instead: deeper networks whose training gets stuck (sigmoid layers
that saturate, ReLUs a huge first step has killed). ``recorded.json`` holds them for digits seed 0, wine seed 1
and breast_cancer seed 2, labelled by eye as the others were, before the rules ran on them; their
best_val_loss is that of the same dataset and seed's first set.

``python tests/curves/record.py --grid DATASET SEED`` records issue #13's grid: 17 learning rates per optimizer
from 1e-6 to 1e5, no momentum, 10 epochs, with the default divergence rule a study applies (each curve keeps its
``stop_reason``). ``recorded.json`` holds it for digits seeds 0 and 1, wine seed 1 and breast_cancer seed 2,
labelled by eye before the rules for ``overfitting`` and a loss that climbs back ran on them, less the rates the
divergence rule stopped in their first epoch.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

SETTINGS: list[tuple[str, dict[str, Any]]] = [
    *(("sgd", {"learning_rate": lr}) for lr in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 2.0, 5.0, 30.0)),
    *(("sgd", {"learning_rate": lr, "momentum": 0.9}) for lr in (1e-4, 1e-2, 0.3, 1.0)),
    *(("adam", {"learning_rate": lr}) for lr in (1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 1.0)),
    *(("rmsprop", {"learning_rate": lr}) for lr in (1e-6, 1e-4, 1e-3, 0.02, 0.1, 1.0)),
    ("adam", {"learning_rate": 0.05, "decay": 0.01}),
    ("sgd", {"learning_rate": 0.5, "momentum": 0.9, "nesterov": True}),
    *(("sgd", {"learning_rate": lr, "momentum": 0.95}) for lr in (0.05, 0.2)),
    *(("adam", {"learning_rate": lr, "beta_1": 0.5}) for lr in (0.003, 0.03)),
    ("rmsprop", {"learning_rate": 0.003, "rho": 0.5}),
    ("sgd", {"learning_rate": 3.0}),
]

#: The grid of issue #13: 17 learning rates per optimizer from 1e-6 to 1e5, no momentum, 10 epochs. It holds
#: the curves a learning rate spoils late (Adam at 0.1 climbs back up) and the ones that overfit.
GRID_RATES = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1e3, 1e4, 1e5)
GRID: list[tuple[str, dict[str, Any]]] = [
    (name, {"learning_rate": lr}) for name in ("sgd", "rmsprop", "adam") for lr in GRID_RATES
]


#: Settings whose training stalls, as (architecture, optimizer, hyperparameters): the source of the plateaus.
STALLING: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"layers": 3, "activation": "sigmoid"}, "sgd", {"learning_rate": 0.01}),
    ({"layers": 3, "activation": "sigmoid"}, "sgd", {"learning_rate": 0.1}),
    ({"layers": 4, "activation": "sigmoid"}, "sgd", {"learning_rate": 0.05}),
    ({"layers": 3, "activation": "relu"}, "adam", {"learning_rate": 0.5}),
]


def record(
    dataset: str, seed: int, epochs: int = 15, *, stalling: bool = False, grid: bool = False
) -> list[dict[str, Any]]:
    from tuner import engine
    from tuner.data import load_dataset
    from tuner.pruning import Divergence
    from tuner.spec import parse_spec

    data = load_dataset(parse_spec({"data": {"dataset": dataset}, "optimizers": {"sgd": {}}}).data, seed=seed)
    plain = {"layers": 1, "activation": "relu"}
    settings = STALLING if stalling else [(plain, name, params) for name, params in (GRID if grid else SETTINGS)]
    # The grid trains as a study does, with the default divergence rule, and keeps its stop reason: a rate
    # that blows the loss up in its first epoch is stopped there, and read as diverged for that reason.
    rule = (lambda: Divergence(max_ratio=10.0, patience=1)) if grid else (lambda: None)
    curves = []
    for architecture, name, params in settings:
        history: list[dict[str, Any]] = []
        config = {"optimizer": name, name: params, "units": 128, **architecture}
        config.update(dropout=0.0, batch_size=64, epochs=epochs, seed=seed)
        engine.train(data, config, lambda metrics, net, into=history: into.append(metrics), rule())
        loss = [h["loss"] if h["loss"] is not None else math.nan for h in history]
        val = [h["val_loss"] if h["val_loss"] is not None else math.nan for h in history]
        source = f"{dataset} seed {seed}: {name} {params}"
        if stalling:
            source += f" {architecture['layers']} x 128 {architecture['activation']}"
        if grid:
            source += ", grid"
        reason = history[-1].get("stop_reason") if grid else None
        curves.append(
            {
                "source": source,
                "loss": loss,
                "val_loss": val,
                "label": "",
                **({"stop_reason": reason} if reason else {}),
            }
        )
    return curves


def plot(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        curves = json.load(f)
    cols = 6
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows))
    for i, (ax, c) in enumerate(zip(axes.flat, curves, strict=False)):
        ax.plot(range(1, len(c["loss"]) + 1), c["loss"], label="loss")
        ax.plot(range(1, len(c["val_loss"]) + 1), c["val_loss"], label="val")
        ax.set_yscale("log")
        reason = f" ({c['stop_reason']})" if c.get("stop_reason") else ""
        ax.set_title(f"{i}: {c['source']}\n{c['label']}{reason}", fontsize=6)
    fig.tight_layout()
    fig.savefig(path.replace(".json", ".png"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plot"]:
        plot(sys.argv[2])
    elif sys.argv[1:2] == ["--stalling"]:
        json.dump(record(sys.argv[2], int(sys.argv[3]), stalling=True), sys.stdout, indent=1)
    elif sys.argv[1:2] == ["--grid"]:
        json.dump(record(sys.argv[2], int(sys.argv[3]), epochs=10, grid=True), sys.stdout, indent=1)
    else:
        json.dump(record(sys.argv[1], int(sys.argv[2])), sys.stdout, indent=1)
