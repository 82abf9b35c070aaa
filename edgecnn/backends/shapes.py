"""What every runner of an ONNX file says about its input: the static batch, and a seeded input."""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgecnn.errors import UserError


class InputShape:
    """Mixin for runners with ``path``, ``input_shape`` (ints, or names for symbolic dims) and
    ``input_dtype``: the checks and inputs the latency loop and accuracy need, one wording."""

    @property
    def static_batch(self) -> Optional[int]:
        dim = self.input_shape[0] if self.input_shape else None
        return dim if isinstance(dim, int) and dim > 0 else None

    def input_for(self, batch: int, seed: int = 0) -> np.ndarray:
        """A seeded random input of the model's shape with the given batch size."""
        if self.static_batch and batch != self.static_batch:
            raise UserError(
                f"this ONNX file has a fixed batch of {self.static_batch}; bench it with --batch "
                f"{self.static_batch} or re-export with --batch dynamic"
            )
        dims = []
        for i, dim in enumerate(self.input_shape[1:], start=1):
            if not isinstance(dim, int) or dim <= 0:
                raise UserError(f"input dimension {i} of '{self.path}' is symbolic ({dim}); re-export with a fixed size")
            dims.append(dim)
        rng = np.random.default_rng(seed)
        return rng.standard_normal((batch, *dims), dtype=np.float32).astype(self.input_dtype)
