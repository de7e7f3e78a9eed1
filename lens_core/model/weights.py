"""ImageNet weights for the paper presets, only ever from a local file (nothing is downloaded): a
torchvision state_dict, as torch.save writes `torchvision.models.<arch>(weights=...).state_dict()`."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import torch
from torch import nn


def load_torchvision_weights(net: nn.Module, path, arch: str, needed: Callable[[str], bool]) -> None:
    """Load the torchvision ``arch`` state_dict at ``path`` into ``net`` (a torchvision ``arch``), in place.

    Keys of ``net`` for which ``needed(key)`` is true must be in the file; the others (a classifier the
    preset replaces) may be missing. A file that is not such a state_dict is a ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arch} weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: cannot read {arch} weights: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict")
    state = {k: v for k, v in state.items() if needed(k)}
    try:
        missing, _ = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a key of the right name with the wrong shape
        raise ValueError(f"{path}: not a torchvision {arch} state_dict: {e}") from e
    missing = [k for k in missing if needed(k)]
    if missing:
        raise ValueError(f"{path}: not a torchvision {arch} state_dict (missing {missing[:3]} ...)")
