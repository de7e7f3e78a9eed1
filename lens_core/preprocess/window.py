"""The paper's single intensity window (Sec. VI-A): -1024..3071 HU rescaled to [0, 255], and how it is stored.

The paper keeps the rescaled intensities as floating-point numbers. ``storage`` says how ``volumes.h5``
holds them: ``uint8`` rounds to whole levels (16 HU per level, a deviation that keeps files and memory
small), ``float16`` keeps ~1 HU below 0 HU and ~2 HU up to 1000 HU, ``float32`` is the paper's floats.
Every reader turns the stored values into floats on one scale (level 64 ~ 0 HU), so models, mining and
pages read any storage the same way. Free of SimpleITK: display and mining code import it too.
"""
from __future__ import annotations

import numpy as np

HU_MIN, HU_MAX = -1024.0, 3071.0
STORAGES = ("uint8", "float16", "float32")


def level(hu):
    """HU -> the window's [0, 255] scale (unclipped): display windows and thresholds in stored units.
    A float array keeps its precision (SimpleITK's float32 volumes: the uint8 rounding stays bit for bit
    what it was before storage was a choice); integers and scalars go through float64."""
    hu = np.asarray(hu)
    if hu.dtype.kind != "f":
        hu = hu.astype(np.float64)
    return (hu - HU_MIN) * (255.0 / (HU_MAX - HU_MIN))


def window(hu: np.ndarray, storage: str = "uint8") -> np.ndarray:
    """The paper's single window: -1024..3071 HU -> 0..255, held as ``storage``."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    v = level(np.clip(hu, HU_MIN, HU_MAX))
    return np.rint(v).astype(np.uint8) if storage == "uint8" else v.astype(storage)
