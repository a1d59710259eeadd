"""Measurement helpers shared by the benchmark scripts in ``scripts/``.

Wall time, process CPU time and peak memory of a callable on CPU (resident set size sampled by
a thread) or CUDA (allocator peak). Not used by the library itself.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time

import torch


def _libc_call(name: str, *args) -> None:
    try:
        getattr(ctypes.CDLL("libc.so.6"), name)(*args)
    except (OSError, AttributeError):
        pass


def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc) so that RSS starts from the live level."""
    _libc_call("malloc_trim", 0)


def fixed_mmap_threshold() -> None:
    """Make glibc return freed arrays over 1 MiB to the system (fixed M_MMAP_THRESHOLD), so that
    the RSS growth of a run measures its own allocations rather than reused heap."""
    _libc_call("mallopt", -3, 1 << 20)  # M_MMAP_THRESHOLD


def rss_bytes() -> int:
    """Resident set size of this process (bytes), from /proc/self/statm."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block in MiB above the level at its start: ``.peak_mb`` after exit.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the resident set size sampled every
    ``period`` seconds by a thread (after ``malloc_trim``); spikes between samples can be missed.
    """

    def __init__(self, device="cpu", period: float = 0.002):
        self.device, self.period, self.peak_mb = torch.device(device), period, None

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            self._stop.wait(self.period)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            malloc_trim()
            self._start = self._max = rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, rss_bytes())
        self.peak_mb = (peak - self._start) / 2 ** 20


def measure(fn, device, repeats):
    """(last result, median wall s, median CPU s, peak extra MiB of the first run)."""
    device = torch.device(device)
    times, cpu, mem, out = [], [], None, None
    for i in range(repeats):
        out = None
        c0 = time.process_time()
        with PeakMemory(device) as peak:
            t0 = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        mem = peak.peak_mb if i == 0 else mem
    return out, statistics.median(times), statistics.median(cpu), mem


def hardware() -> str:
    """One line on the machine: CPU model, cores, torch threads, GPU (when torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return "; ".join(parts) + f"; torch {torch.__version__}"


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"164x205x205"`` -> (164, 205, 205)."""
    dims = tuple(int(v) for v in str(text).lower().split("x"))
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"a shape is three positive sizes like 164x205x205, got {text!r}")
    return dims


def add_common_arguments(parser, *, shapes=("164x205x205",), repeats: int = 3,
                         devices: bool = True) -> None:
    """The options every benchmark script shares: --shapes, --devices, --repeats, --threads,
    --out (read them back with :func:`common_setup`)."""
    parser.add_argument("--shapes", nargs="+", default=list(shapes),
                        help=f"XxYxZ (default {' '.join(shapes)})")
    if devices:
        parser.add_argument("--devices", nargs="+", default=None,
                            help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed runs per case (default {repeats}; the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", default=None, help="also write the markdown report here")


def common_setup(args) -> tuple[list[tuple[int, int, int]], list[str]]:
    """Apply --threads and return (shapes, devices) from :func:`add_common_arguments` options."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    devs = getattr(args, "devices", None) or (["cpu", "cuda"] if torch.cuda.is_available()
                                              else ["cpu"])
    return [parse_shape(s) for s in args.shapes], list(devs)


def report(text: str, out=None) -> None:
    """Print a benchmark's markdown report and, with ``out``, also write it there."""
    from pathlib import Path

    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
