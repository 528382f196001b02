"""Wall time and peak memory of a block of work, on CPU (anonymous resident memory, sampled) or CUDA
(allocator peak), and how far that peak rose above what was held when the block started (what the
block itself needed)."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time

import psutil
import torch


def _load_malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim")
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Hand memory that Python and the C allocator hold but no longer use back to the OS.

    Without this, a block can be served from pages an earlier block freed (e.g. the one-time model
    conversion) and its resident set does not grow: "memory a block adds" would depend on what ran
    before it in the process."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def anonymous_resident_bytes(process: psutil.Process | None = None) -> int:
    """Resident memory not backed by a file: heap and anonymous mappings (tensors), without the
    memory-mapped model files and shared libraries whose pages the OS may drop and re-read."""
    info = (process or psutil.Process()).memory_info()
    shared = getattr(info, "shared", 0)   # Linux: file-backed + shared resident pages
    return max(info.rss - shared, 0)


class Measure:
    """``with Measure(device) as m: ...`` then ``m.seconds``, ``m.peak_bytes`` and ``m.added_bytes``.

    On CUDA the peak is torch's allocator high-water mark for the block; on CPU the highest
    anonymous resident memory of this process sampled every `interval` seconds during the block.
    ``added_bytes`` = peak - the same quantity at the start. On CPU, memory freed earlier is returned
    to the OS first (:func:`release_freed_memory`), so the increase means the same thing whatever ran
    before in the process.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.02) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.seconds = 0.0
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, anonymous_resident_bytes(process))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Measure":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            release_freed_memory()
            self.start_bytes = anonymous_resident_bytes()
            self.peak_bytes = self.start_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak_bytes = max(self.peak_bytes, anonymous_resident_bytes())
            self._stop.set()
            self._thread.join()
        self.seconds = time.perf_counter() - self._start

    @property
    def added_bytes(self) -> int:
        return max(self.peak_bytes - self.start_bytes, 0)
