"""What every network step shares, below training, inference and FPR alike: the device and the precision.
(How a preprocessed slice becomes a network input is lens_core.model.network_input.)"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

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
