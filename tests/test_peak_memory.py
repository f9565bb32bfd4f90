"""PeakMemory: what a block itself allocates, even after earlier work freed memory it could reuse."""

from __future__ import annotations

import ctypes.util
import platform
import time

import pytest
import torch

from erasekit.methods.base import PeakMemory


@pytest.mark.skipif(
    platform.system() != "Linux" or not ctypes.util.find_library("c"), reason="glibc's malloc_trim"
)
def test_every_block_reads_its_own_allocation_not_zero():
    readings = []
    for _ in range(6):  # each block frees 16 MiB that the next would silently reuse without a trim
        with PeakMemory() as memory:
            block = torch.ones(4 * 2**20)  # 16 MiB of float32, touched
            block += 1
            time.sleep(0.05)
        del block
        readings.append(memory.peak_bytes / 2**20)
    assert min(readings) >= 12, readings
    assert max(readings) < 64, readings  # and not the whole process
