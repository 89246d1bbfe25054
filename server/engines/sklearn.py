"""scikit-learn engine: an estimator or Pipeline saved with joblib (``model.joblib``) or pickle
(``model.pkl``), run in the python engine's worker processes.

Anything with the scikit-learn API loads, XGBoost's and LightGBM's scikit-learn wrappers
included. model.toml declares one input (the feature matrix, ``[-1, n_features]`` with
batching) and one output per method: ``method = "predict" | "predict_proba" |
"decision_function" | "transform"`` (default ``predict``). The input's feature count is checked
against the estimator's ``n_features_in_`` at load; results are cast to the declared datatype
(string class labels to BYTES) and reshaped to the declared shape when the sizes agree.

Loading a pickle runs code: the file must come from the repository, which the operator
controls (docs/engines.md).
"""

from __future__ import annotations

from typing import Any

from ..datatypes import NUMPY
from ..errors import ModelLoadError
from . import LoadOptions
from .python import PythonEngine


class SklearnEngine(PythonEngine):
    """A scikit-learn estimator in worker processes; one declared output per method."""

    default_file = "model.joblib"
    other_files = ("model.pkl",)
    kind = "sklearn"

    def _load_message(self, options: LoadOptions) -> dict[str, Any]:
        if len(self.inputs) != 1:
            raise ModelLoadError(
                f"the sklearn engine takes one input, the feature matrix; model.toml declares "
                f"{len(self.inputs)} ({', '.join(t.name for t in self.inputs)})"
            )
        outputs = {}
        for spec in self.outputs:
            dtype = "bytes" if spec.datatype == "BYTES" else NUMPY[spec.datatype].str
            outputs[spec.name] = [spec.method or "predict", dtype, list(spec.shape)]
        return {
            **super()._load_message(options),
            "inputs": [self.inputs[0].name],
            "outputs": outputs,
        }

    def _check(self, info: dict[str, Any]) -> None:
        features = info.get("n_features_in")
        spec = self.inputs[0]
        found = spec.shape[-1] if spec.shape else None
        if features is not None and found not in (-1, features):
            raise ModelLoadError(
                f"inputs.{spec.name}: shape {list(spec.shape)} gives {found} features, but "
                f"the {info.get('class', 'estimator')} in {self._file} takes {features} "
                "(n_features_in_)"
            )
