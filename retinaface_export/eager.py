"""PyTorch eager as a runner: a float32 N×3×H×W array in, the three outputs out as arrays.

Each artifact format's runner lives in its own module in ``converters/``; eager is the reference they are
all compared with.
"""

from __future__ import annotations

import numpy as np

from retinaface_export.format_api import Runner


def eager_runner(model) -> Runner:
    """PyTorch eager (or a TorchScript module), no gradients."""
    import torch

    def run(data: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [out.numpy() for out in model(torch.from_numpy(data))]  # a tuple, in the model's order

    return run
