"""Measure: the peak of a block and how far it rose above the memory held when the block began.

"Added" memory must mean the same whatever ran before in the process: the one-time model conversion
on a fresh machine used to leave freed heap pages that the next block reused without the resident set
growing (4 KiB "added" for a 200 MiB block)."""
from __future__ import annotations

import torch

from langedit.profiling import Measure

MIB = 2**20
BLOCK_MIB = 200


def _busy_block() -> Measure:
    """200 tensors of 1 MiB (the size range of a batch's activations), all alive at the block's end."""
    with Measure("cpu") as busy:
        pieces = [torch.ones(MIB // 4) for _ in range(BLOCK_MIB)]
        for piece in pieces:
            piece.add_(1.0)
    del pieces
    return busy


def _leave_freed_heap_behind() -> torch.Tensor:
    """What a large earlier job does: a big mapped buffer freed (glibc then serves later 1 MiB
    requests from the heap), many heap chunks freed, one small chunk kept so the heap cannot shrink."""
    big = torch.ones(16 * MIB // 4)
    del big
    chunks = [torch.ones(MIB // 4) for _ in range(3 * BLOCK_MIB)]
    keeper = torch.ones(1024)
    del chunks
    return keeper


def _check(busy: Measure) -> None:
    assert 0.9 * BLOCK_MIB * MIB < busy.added_bytes < 1.3 * BLOCK_MIB * MIB, busy.added_bytes / MIB
    assert busy.peak_bytes >= busy.start_bytes + busy.added_bytes - 1 and busy.seconds > 0


def test_added_bytes_count_the_block_not_what_was_held_before():
    held = torch.ones(300 * MIB // 4)               # held before the block: in the peak, not in the increase
    with Measure("cpu") as idle:
        pass
    assert idle.peak_bytes > 300 * MIB and idle.added_bytes < 50 * MIB
    _check(_busy_block())
    del held


def test_added_bytes_after_a_large_allocate_and_free_in_the_same_process():
    keeper = _leave_freed_heap_behind()
    _check(_busy_block())
    del keeper
