"""Measurement helpers shared by the benchmark scripts in ``scripts/``.

Wall time, process CPU time and peak memory of a callable on CPU (resident set size sampled by
a thread) or CUDA (allocator peak). Not used by the library itself.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import torch


class PeakRSS:
    """Peak resident set size (MiB) above the level at entry, sampled by a thread."""

    def __init__(self, period=0.002):
        self.period, self.peak, self._stop = period, 0.0, threading.Event()

    @staticmethod
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            time.sleep(self.period)

    def __enter__(self):
        self.start = self.peak = self.rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())
        self.extra = self.peak - self.start


def fixed_mmap_threshold():
    """Make glibc return freed arrays over 1 MiB to the system (fixed M_MMAP_THRESHOLD), so that
    the RSS growth of a run measures its own allocations rather than reused heap."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def measure(fn, device, repeats):
    """(last result, median wall s, median CPU s, peak extra MiB of the first run)."""
    times, cpu, mem, out = [], [], None, None
    for i in range(repeats):
        out = None
        c0 = time.process_time()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            out = fn()
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        else:
            with PeakRSS() as p:
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            peak = p.extra
        cpu.append(time.process_time() - c0)
        mem = peak if i == 0 else mem
    return out, statistics.median(times), statistics.median(cpu), mem
