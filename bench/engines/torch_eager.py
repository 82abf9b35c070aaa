"""PyTorch eager FP32: the model as a user runs it before any deployment work."""

from __future__ import annotations

import numpy as np


class TorchRunner:
    def __init__(self, job: dict):
        import torch

        from edgecnn.models import load_model

        torch.set_num_threads(job["threads"])
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.torch = torch
        self.module = load_model(job["model"], weights=job["weights_path"], **job["options"]).module.eval()

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(np.ascontiguousarray(x))).numpy()


def open_eager(job: dict, artifact: dict):
    return TorchRunner(job)
