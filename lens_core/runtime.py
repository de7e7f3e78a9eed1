"""What every network step shares, below training, inference and FPR alike: the device, the precision,
and how a preprocessed slice becomes a network input (2.5D stack, normalisation, padding)."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import torch

PAD_MULTIPLE = 16  # coarsest backbone stride


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


PRECISIONS = ("fp32", "bf16")


def cpu_has_bf16() -> bool:
    """Native bfloat16 dot products on this CPU (AVX-512 BF16 or AMX): there bf16 autocast runs LENS's
    convolutions and matrix products ~2x faster; elsewhere oneDNN emulates it, slower than fp32."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", info) is not None


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CPU with native bfloat16 (:func:`cpu_has_bf16`), else fp32 (CUDA: always bf16
    autocast, see :func:`autocast`)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str = "fp32"):
    """Mixed precision on CUDA (bfloat16: no loss scaling needed). On the CPU full precision, or bfloat16
    autocast with ``precision="bf16"`` (a named switch: other numerics, ~2x faster convolutions and matrix
    products where the CPU has AVX-512 BF16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
