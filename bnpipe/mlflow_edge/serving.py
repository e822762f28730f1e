"""Serving: the registered model, an MLflow pyfunc that takes raw inputs and returns class probabilities.

Tabular models declare their raw feature columns by name, so MLflow checks and orders the
columns of a scoring request; image models take a (n, 28, 28) tensor. Scaling, if any, is a
layer inside the Keras model: no scaler is ever applied outside it.
"""

from __future__ import annotations

import mlflow.pyfunc


class KerasClassifier(mlflow.pyfunc.PythonModel):
    """Wraps a saved ``model.keras``; ``predict`` returns per-class probabilities and the class."""

    def __init__(self, classes: list[str] | None = None):
        self.classes = list(classes or [])

    def load_context(self, context):
        import keras

        self.model = keras.models.load_model(context.artifacts["keras_model"], compile=False)

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        values = model_input.to_numpy(dtype="float32") if isinstance(model_input, pd.DataFrame) else model_input
        proba = np.asarray(self.model.predict(np.asarray(values, dtype="float32"), verbose=0))
        names = self.classes or [str(i) for i in range(proba.shape[1])]
        out = pd.DataFrame(proba, columns=[f"proba_{c}" for c in names])
        out.insert(0, "predicted_class", [names[i] for i in proba.argmax(axis=1)])
        return out


def signature(snapshot: dict):
    """Raw-input signature (``tracking.input_schema``: named double columns for tables, a float32 tensor
    for images); the output is the class and its probabilities."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from bnpipe.mlflow_edge.tracking import input_schema

    outputs = Schema(
        [ColSpec("string", "predicted_class")] + [ColSpec("float", f"proba_{c}") for c in snapshot["classes"]]
    )
    return ModelSignature(inputs=input_schema(snapshot), outputs=outputs)


def log_model(run_id: str, keras_path: str, snapshot: dict, tracking_uri: str, model_id: str | None = None) -> str:
    """Log the pyfunc model as an output of ``run_id``; returns its model URI.

    ``model_id``: the variant's LoggedModel (``tracking.create_variant_model``, already an output of
    ``run_id``), which becomes this full model; logging it again writes the same files, so a retry
    is harmless. Without it, a new LoggedModel is created in ``run_id``, resumed for the purpose.
    """
    import contextlib
    from importlib.metadata import version
    from pathlib import Path

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    # Logged inside the run, MLflow would link the model to it as an output a second time, which
    # the store refuses; the variant's LoggedModel already names its run.
    with mlflow.start_run(run_id=run_id) if model_id is None else contextlib.nullcontext():
        info = mlflow.pyfunc.log_model(
            name="registered_model",
            model_id=model_id,
            python_model=KerasClassifier(snapshot["classes"]),
            artifacts={"keras_model": keras_path},
            signature=signature(snapshot),
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the whole bnpipe package
            pip_requirements=[
                f"keras=={version('keras')}",  # not `import keras`: that alone costs the compare task ~4 s
                f"tensorflow-cpu=={version('tensorflow-cpu')}",
                f"mlflow=={mlflow.__version__}",
                "pandas",
            ],
        )
    return info.model_uri
