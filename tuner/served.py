"""The best model's MLflow pyfunc, as MLflow loads it: a model from code (MLflow copies this file into the
model and runs it there, so that serving needs MLflow and Keras, not tuner). tuner never imports it.

It wraps the trained network, an MLflow Model of the Keras flavour in the artifact ``network``
(:func:`tuner.engine.export`), and returns what that network returns, ``{"label": ..., "probabilities": ...}``
for classification, the prediction for regression, with one change: TensorFlow gives text labels as bytes,
which MLflow's scoring server would send base64-encoded; they are returned as text.
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

    # No type hints: MLflow reads them as a schema to enforce (and warns at Any); the signature is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        rows = np.asarray(model_input, dtype=np.float32)
        out = self.network.predict(rows, verbose=0)
        if not isinstance(out, dict):
            return np.asarray(out)
        labels = [v.decode() if isinstance(v, bytes) else v.item() for v in np.asarray(out["label"]).ravel()]
        return {"label": labels, "probabilities": np.asarray(out["probabilities"])}


set_model(Network())
