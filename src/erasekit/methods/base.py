"""What every method is, and the one runner that turns a method's work into a recorded artifact.

A method is a thin class with ``name``, ``paper``, ``config_cls`` and
``erase(backend, concepts, config, *, generator) -> Artifact``. It never mutates the caller's model for good and
never applies its own result: it returns an artifact (the runner checks that the model it was given
is unchanged afterwards). The runner seeds everything, times the run, samples peak memory, and
writes the manifest: method, config, concepts, base fingerprint, versions, seed, wall time, memory.
"""

from __future__ import annotations

import functools
import gc
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
from erasekit.sources import complete_spec, source_of


class Method(Protocol):
    name: ClassVar[str]
    paper: ClassVar[str]
    config_cls: ClassVar[type]
    # Config overrides (``key=value`` strings) for a seconds-scale run on the tiny test pipeline; the
    # conformance suite and the CLI tests use them. Not a quality setting.
    smoke_overrides: ClassVar[tuple[str, ...]]

    def erase(
        self, backend: Any, concepts: ConceptSpec, config: Any, *, generator: torch.Generator | None = None
    ) -> Artifact: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# Which garbage generations _release_free_memory collects. 1 = the young ones (what the last work
# left in cycles); a full collection (2) walks every object of the process — 0.4–0.7 s once
# diffusers and transformers are imported (~400 k objects), 20–40× a UCE edit — and changes no
# reading: garbage left uncollected only holds memory, it cannot make a block's growth read low.
gc_generation = 1


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (looked up once: ``find_library`` runs ``ldconfig``), or None."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def _release_free_memory() -> None:
    """Hand memory freed by earlier work back to the OS, so that a block's RSS growth is its own.

    Without it, glibc keeps freed tensors' pages and the next block reuses them: its RSS does not grow
    and its peak reads as ~0 (measured: every erasure after the first in one process). ``malloc_trim``
    exists only in glibc; elsewhere nothing is released and the reading is a lower bound.
    """
    gc.collect(gc_generation)
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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
    method: Method,
    backend: Any,
    concepts: ConceptSpec,
    config: Any,
    *,
    seed: int = 0,
    complete: bool = True,
    default_anchors: bool = True,
) -> Artifact:
    """Run ``method`` and return its artifact with a complete manifest.

    With ``complete`` (the default) what the user left out of ``concepts`` comes from the backend's
    data source (:func:`erasekit.sources.complete_spec`); the manifest records the completed spec and
    the source. Methods that map a concept onto an anchor (``takes_anchor``: UCE, ABO) get the
    source's default anchor for a concept given without one, unless ``default_anchors`` is False
    (then their own no-anchor rule holds). The method gets a ``torch.Generator`` seeded with ``seed``.

    ``cost.seconds`` is the wall time of ``method.erase`` alone; ``cost.wall_seconds`` that of this
    whole call: the two model fingerprints (the check that the method left the model unchanged), the
    memory accounting's preparation and the manifest.
    """
    start_call = time.perf_counter()
    if "" in concepts.preserve and not getattr(method, "accepts_unconditional_preserve", False):
        raise ErasekitError(
            f'{method.name} cannot preserve the unconditional prompt ""; drop --preserve "" (uce takes it).'
        )
    source = source_of(backend)
    # Fill what the user left out (preserve concepts, caption-style templates, retain prompts) from the
    # model's data source; methods without a preserve term (takes_preserve False for this config) get none.
    if complete:
        concepts = complete_spec(
            concepts,
            source,
            preserve=takes_preserve(method, config),
            anchors=default_anchors and getattr(method, "takes_anchor", False),
            seed=seed,
        )
    fingerprint = backend.fingerprint()
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)  # every method takes it (conformance suite)
    with PeakMemory() as memory:
        start = time.perf_counter()
        artifact = method.erase(backend, concepts, config, generator=generator)
        seconds = time.perf_counter() - start
    if backend.fingerprint() != fingerprint:
        raise RuntimeError(
            f"method {method.name} changed the model it was given; methods must return artifacts only"
        )
    cost = {
        "seconds": round(seconds, 4),
        "peak_memory_bytes": int(memory.peak_bytes),
        "artifact_bytes": artifact.size_bytes(),
        "torch_threads": torch.get_num_threads(),
    }
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
        cost=cost,
        data_source=source.describe(),
    )
    cost["wall_seconds"] = round(time.perf_counter() - start_call, 4)
    return artifact


def takes_preserve(method: Method, config: Any) -> bool:
    """Whether ``method`` with ``config`` uses preserve concepts (so run_method fills them in): its
    ``takes_preserve``, a bool or a function of the config (ESD: only with its retain term)."""
    takes = getattr(method, "takes_preserve", True)
    return bool(takes(config)) if callable(takes) else bool(takes)


def require(condition: bool, message: str) -> None:
    """Raise a one-line :class:`ErasekitError` unless ``condition`` (for config validation)."""
    if not condition:
        raise ErasekitError(message)


def require_no_anchor_or_preserve(
    concepts: ConceptSpec,
    method: str,
    alternative: str = "",
    *,
    allow_preserve: bool = False,
    preserve_advice: str = "",
) -> None:
    """Refuse anchors, and (unless ``allow_preserve``) preserve concepts, for a method whose objective
    erases towards the unconditional prediction with no preserve term (ESD, Co-Erasing).
    ``preserve_advice`` replaces the default "drop --preserve" advice."""
    hint = f" (or use {alternative})" if alternative else ""
    if any(t.anchor is not None for t in concepts.targets):
        raise ErasekitError(
            f"{method} erases towards the unconditional prediction and takes no anchor; drop --anchor{hint}."
        )
    if concepts.preserve and not allow_preserve:
        advice = preserve_advice or f"drop --preserve{hint}"
        raise ErasekitError(f"{method} has no preserve set in its objective; {advice}.")
