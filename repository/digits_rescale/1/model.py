"""Rescale 8x8 grayscale pixels (0..255, as an image file stores them) to the 0..16 intensities
the digits model was trained on. Served by the python engine (docs/engines.md)."""

from pathlib import Path

import numpy as np


class Rescale:
    def __init__(self, folder: Path, parameters: dict) -> None:
        self.factor = np.float32(parameters.get("scale_max", 16.0)) / np.float32(255.0)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = inputs["pixels"]  # [batch, 64] uint8, the whole batch at once
        return {"image": pixels.astype(np.float32) * self.factor}
