"""Memory planning for learned inference: free device memory and a per-voxel estimate.

:class:`dlqsm.inference.Predictor` compares the estimate for the whole volume with a fraction
of the free memory to choose whole-volume or sliding-window inference.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from dlqsm.inference.network import call_network
from dlqsm.inference.spec import ModelSpec


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA free memory, or available system RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def bytes_per_voxel(net: nn.Module, spec: ModelSpec, device, *, probe: int | None = None) -> float:
    """Estimated peak memory of one forward pass, per input voxel (bytes).

    The network runs once on a small probe cube (``probe`` voxels a side, rounded up to the
    size divisor). On CUDA the peak allocated memory of that pass is measured (plus 25 %). On
    the CPU, forward hooks sum the sizes of every tensor the leaf modules return; without
    autograd most are freed early, so the sum is a conservative (high) estimate.
    """
    device = torch.device(device)
    side = probe or max(64 if device.type == "cuda" else 32, 2 * spec.pad_multiple)
    side = int(math.ceil(side / spec.pad_multiple) * spec.pad_multiple)
    x = torch.zeros(1, 1, side, side, side, device=device)
    args = (x, torch.ones_like(x), torch.tensor([[0.0, 0.0, 1.0]], device=device),
            torch.tensor([list(spec.voxel_size)], device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            call_network(net, *args)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return 1.25 * max(peak, 1) / side ** 3 + 16.0
    total = [0]

    def hook(_mod, _inp, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            call_network(net, *args)
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 1) / side ** 3 + 16.0  # + input, mask, output, resampled copies
