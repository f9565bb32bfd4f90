"""What every method is, and the one runner that turns a method's work into a recorded artifact.

A method is a thin class with ``name``, ``paper``, ``config_cls`` and
``erase(backend, concepts, config) -> Artifact``. It never mutates the caller's model for good and
never applies its own result: it returns an artifact (the runner checks that the model it was given
is unchanged afterwards). The runner seeds everything, times the run, samples peak memory, and
writes the manifest: method, config, concepts, base fingerprint, versions, seed, wall time, memory.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, ClassVar, Protocol

import torch

from erasekit.artifacts import Artifact, environment_versions, now_iso
from erasekit.concepts import ConceptSpec
from erasekit.config import config_to_dict
from erasekit.errors import ErasekitError


class Method(Protocol):
    name: ClassVar[str]
    paper: ClassVar[str]
    config_cls: ClassVar[type]
    # Config overrides (``key=value`` strings) for a seconds-scale run on the tiny test pipeline; the
    # conformance suite and the CLI tests use them. Not a quality setting.
    smoke_overrides: ClassVar[tuple[str, ...]]

    def erase(self, backend: Any, concepts: ConceptSpec, config: Any) -> Artifact: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _release_free_memory() -> None:
    """Hand memory freed by earlier work back to the OS, so that a block's RSS growth is its own.

    Without it, glibc keeps freed tensors' pages and the next block reuses them: its RSS does not grow
    and its peak reads as ~0 (measured: every erasure after the first in one process). ``malloc_trim``
    exists only in glibc; elsewhere nothing is released and the reading is a lower bound.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class PeakMemory:
    """Peak resident memory (CPU: sampled RSS above the start; CUDA: max allocated) during a block.

    On CPU, memory freed before the block is first returned to the OS (glibc ``malloc_trim``), so the
    reading is what the block itself needed at its peak, not what earlier work left allocated.
    """

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak_bytes = interval, 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            import psutil

            return psutil.Process(os.getpid()).memory_info().rss
        except ImportError:  # psutil comes with accelerate; without it we report 0, not a guess
            return 0

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)

    def __enter__(self) -> PeakMemory:
        _release_free_memory()
        self._start = self._rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)
        if torch.cuda.is_available():
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())


def run_method(
    method: Method, backend: Any, concepts: ConceptSpec, config: Any, *, seed: int = 0
) -> Artifact:
    """Run ``method`` and return its artifact with a complete manifest."""
    fingerprint = backend.fingerprint()
    seed_everything(seed)
    with PeakMemory() as memory:
        start = time.perf_counter()
        artifact = method.erase(backend, concepts, config)
        seconds = time.perf_counter() - start
    if backend.fingerprint() != fingerprint:
        raise RuntimeError(
            f"method {method.name} changed the model it was given; methods must return artifacts only"
        )
    artifact.manifest.update(
        method=method.name,
        paper=method.paper,
        config=config_to_dict(config),
        concepts=concepts.to_dict(),
        base_model=getattr(backend, "name", "model"),
        base_fingerprint=fingerprint,
        backend=backend.kind,
        versions=environment_versions(),
        seed=seed,
        created=now_iso(),
        cost={
            "seconds": round(seconds, 4),
            "peak_memory_bytes": int(memory.peak_bytes),
            "artifact_bytes": artifact.size_bytes(),
            "torch_threads": torch.get_num_threads(),
        },
    )
    return artifact


def require(condition: bool, message: str) -> None:
    """Raise a one-line :class:`ErasekitError` unless ``condition`` (for config validation)."""
    if not condition:
        raise ErasekitError(message)
