"""How preprocessed slices become LENS's input (Sec. IV-C): the 2.5D stack of neighbouring slices around a
slice, the window's scale to the network's, and the padding to the coarsest stride. Training and inference
both build their inputs here, so a detector sees at test time what it was trained on."""
from __future__ import annotations

import numpy as np
import torch

PAD_MULTIPLE = 16  # coarsest backbone stride


def normalize(slices: np.ndarray) -> torch.Tensor:
    """The window's 0..255 scale (-1024..3071 HU; any storage) -> float32, air ~ -1, soft tissue ~ 0."""
    return (torch.from_numpy(np.ascontiguousarray(slices)).float() - 64.0) / 64.0


def stack_slices(volume, z: int, n: int) -> np.ndarray:
    """The ``n`` slices centred on ``z`` (edge slices repeated past the volume's ends) ``[n, H, W]``.

    An even ``n`` (two groups of 3) has no middle slice: ``z`` is slice ``n // 2``, one more slice above
    it than below (6: z-3 .. z+2, so the groups are z-3..z-1 and z..z+2).

    ``volume`` is anything indexable like ``[z, y, x]`` (an h5py dataset or a numpy array)."""
    depth = volume.shape[0]
    idx = np.clip(np.arange(z - n // 2, z - n // 2 + n), 0, depth - 1)
    lo, hi = int(idx.min()), int(idx.max())
    block = volume[lo:hi + 1]
    return np.asarray(block)[idx - lo]
