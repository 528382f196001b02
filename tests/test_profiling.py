"""Measure: the peak of a block and how far it rose above the memory held when the block began."""
from __future__ import annotations

import torch

from langedit.profiling import Measure

MIB = 2**20


def test_added_bytes_count_the_block_not_what_was_held_before():
    held = torch.ones(300 * MIB // 4)               # held before the block: in the peak, not in the increase
    with Measure("cpu") as idle:
        pass
    with Measure("cpu") as busy:
        block = torch.ones(200 * MIB // 4)
        block.add_(1.0)
    assert idle.peak_bytes > 300 * MIB and idle.added_bytes < 50 * MIB
    assert 180 * MIB < busy.added_bytes < 260 * MIB
    assert busy.peak_bytes >= busy.start_bytes + busy.added_bytes - 1 and busy.seconds > 0
    del held, block
