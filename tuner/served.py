"""The best model's MLflow pyfunc, as MLflow loads it: a model from code (MLflow copies this file into the
model and runs it there, so that serving needs MLflow and Keras, not tuner). tuner never imports it.

It wraps the trained network, an MLflow Model of the Keras flavour in the artifact ``network``
(:func:`tuner.engine.export`), which takes rows as the data has them and returns the probabilities per class
(or the prediction, for regression). For classification it adds the user's class labels, mapped from the
``classes`` of its model config: ``{"label": [...], "probabilities": [[...]]}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class Network(PythonModel):
    """Rows as the data has them in; the user's class labels and the probabilities per class out."""

    def load_context(self, context: Any) -> None:
        import mlflow.tensorflow

        self.network = mlflow.tensorflow.load_model(context.artifacts["network"])
        self.classes = list((context.model_config or {}).get("classes") or [])

    # No type hints: MLflow reads them as a schema to enforce (and warns at Any); the signature is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        out = np.asarray(self.network.predict(np.asarray(model_input, dtype=np.float32), verbose=0))
        if not self.classes:
            return out
        return {"label": [self.classes[k] for k in out.argmax(axis=1)], "probabilities": out}


set_model(Network())
