"""Params/MACs of a PyTorch model, as a measurement (``edgecnn profile``, reports).

The counter itself lives in :mod:`edgecnn.models.macs`, below the passes, because the
channel-pruning pass budgets by MACs too; this module is its name on the measuring side.
"""

from edgecnn.models.macs import KIND_ORDER, LayerRow, Profile, kind_shares, profile_model

__all__ = ["KIND_ORDER", "LayerRow", "Profile", "kind_shares", "profile_model"]
