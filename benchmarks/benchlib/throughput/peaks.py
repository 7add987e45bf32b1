"""The matmul FLOP/s a training step's achieved FLOP/s are compared with (same process)."""

from __future__ import annotations

from typing import Any

import torch

from benchlib.machine import now


def matmul_flops(
    device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int
) -> dict[str, Any]:
    """Best FLOP/s of square ``torch.mm`` over ``sizes`` (2 n^3 per product)."""
    best: dict[str, Any] = {"flops": 0.0}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up
        for _ in range(repeats):
            start = now(device)
            torch.mm(a, b)
            seconds = now(device) - start
            if 2 * n**3 / seconds > best["flops"]:
                best = {"flops": 2 * n**3 / seconds, "n": n, "seconds": seconds}
        del a, b
    return best


def matmul_peaks(device: torch.device, quick: bool, bf16: bool) -> dict[str, dict[str, Any]]:
    """Peak matmul FLOP/s per precision the step may run in (fp32; tf32/bf16 where used)."""
    sizes = [2048] if quick else [2048, 4096]
    repeats = 2 if quick else 3
    peaks: dict[str, dict[str, Any]] = {}
    if device.type == "cuda":
        sizes = [4096, 8192]
        saved = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            peaks["fp32"] = matmul_flops(device, torch.float32, sizes, repeats + 5)
            torch.backends.cuda.matmul.allow_tf32 = True
            peaks["tf32"] = matmul_flops(device, torch.float32, sizes, repeats + 5)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        peaks["bf16"] = matmul_flops(device, torch.bfloat16, sizes, repeats + 5)
    else:
        peaks["fp32"] = matmul_flops(device, torch.float32, sizes, repeats)
        if bf16:  # small: CPUs without native bf16 (no AVX512-BF16/AMX) run it at ~1 GFLOP/s
            peaks["bf16"] = matmul_flops(device, torch.bfloat16, [512], 2)
    return peaks


def compute_precision(device: torch.device, bf16: bool) -> str:
    """The matmul precision the training convolutions effectively run in."""
    if bf16:
        return "bf16"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"
