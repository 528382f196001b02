"""Wall time and peak memory of a block of work, on CPU (process RSS, sampled) or CUDA (allocator peak),
and how far that peak rose above what was held when the block started (what the block itself needed)."""
from __future__ import annotations

import threading
import time

import psutil
import torch


class Measure:
    """``with Measure(device) as m: ...`` then ``m.seconds``, ``m.peak_bytes`` and ``m.added_bytes``.

    On CUDA the peak is torch's allocator high-water mark for the block; on CPU the highest
    resident set size of this process sampled every `interval` seconds during the block.
    ``added_bytes`` = peak - the same quantity at the start: it does not depend on what earlier
    work left allocated. On CPU it can under-count memory the C allocator kept from earlier
    work and hands out again without the resident set growing.
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
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "Measure":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.start_bytes = psutil.Process().memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)
        self.seconds = time.perf_counter() - self._start

    @property
    def added_bytes(self) -> int:
        return max(self.peak_bytes - self.start_bytes, 0)
