"""Which channel takes which offset when a k x k kernel becomes a shift: ShiftNet's even
split, the same split assigned by kernel energy, or each channel's strongest tap."""

from __future__ import annotations

import torch


def even_taps(channels: int, kernel: int) -> torch.Tensor:
    """ShiftNet's assignment: channels split evenly over the k*k taps in contiguous groups,
    the remainder on the centre tap."""
    per_tap = channels // (kernel * kernel)
    taps = [(t // kernel, t % kernel) for t in range(kernel * kernel) for _ in range(per_tap)]
    centre = (kernel // 2, kernel // 2)
    taps += [centre] * (channels - len(taps))
    # Keep groups contiguous: sort by tap, centre group holding the remainder.
    taps.sort()
    return torch.tensor(taps, dtype=torch.long)


def balanced_taps(energy: torch.Tensor, kernel: int) -> torch.Tensor:
    """Even split over the taps (as ShiftNet) but choosing which channel takes which tap so
    that the kept kernel energy is largest: an assignment problem (scipy's Hungarian solver).

    ``energy`` is (C, k*k): how much of channel c's kernel sits at each tap.
    """
    from scipy.optimize import linear_sum_assignment

    channels = energy.shape[0]
    slots = even_taps(channels, kernel)
    slot_index = (slots[:, 0] * kernel + slots[:, 1]).numpy()
    cost = -energy.detach().double().numpy()[:, slot_index]  # (C channels, C slots)
    rows, cols = linear_sum_assignment(cost)
    taps = torch.empty(channels, 2, dtype=torch.long)
    taps[torch.as_tensor(rows)] = slots[torch.as_tensor(cols)]
    return taps


def dominant_taps(energy: torch.Tensor, kernel: int) -> torch.Tensor:
    """Each channel keeps the tap holding most of its kernel's energy (groups of any size).

    Pretrained 3x3 kernels are centre-heavy, so most channels keep the centre: the closest
    single-tap approximation of each kernel, at the price of ShiftNet's even spread.
    """
    index = energy.argmax(1)
    return torch.stack([index // kernel, index % kernel], 1).long()


def choose_taps(assign: str, energy: torch.Tensor, kernel: int) -> torch.Tensor:
    if assign == "balanced":
        return balanced_taps(energy, kernel)
    if assign == "dominant":
        return dominant_taps(energy, kernel)
    return even_taps(energy.shape[0], kernel)
