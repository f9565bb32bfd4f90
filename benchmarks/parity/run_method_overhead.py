"""run_method overhead outside cost.seconds, before (full gc + libc lookup every call) and after.

python benchmarks/parity/run_method_overhead.py shapes
"""

import ctypes
import ctypes.util
import gc
import statistics
import sys
import time

import torch

from erasekit.concepts import ConceptSpec
from erasekit.methods import base, run_method
from erasekit.methods.uce import UCE, UCEConfig
from erasekit.zoo import load_model

torch.set_num_threads(1)


def old_release():  # the function as it was at f079eaf
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


model = sys.argv[1] if len(sys.argv) > 1 else "shapes"
backend = load_model(model)
spec = ConceptSpec.from_lists(["star"])
new_release = base._release_free_memory
print("objects tracked by gc:", len(gc.get_objects()))
for label, release in [
    ("before", old_release),
    ("after", new_release),
    ("before", old_release),
    ("after", new_release),
]:
    base._release_free_memory = release
    rows = []
    for _ in range(6):
        t0 = time.perf_counter()
        art = run_method(UCE(), backend, spec, UCEConfig(), seed=0, complete=False)
        rows.append(
            (
                time.perf_counter() - t0,
                art.manifest["cost"]["seconds"],
                art.manifest["cost"]["peak_memory_bytes"],
            )
        )
    rows = rows[1:]
    w = statistics.median(r[0] for r in rows)
    s = statistics.median(r[1] for r in rows)
    print(
        f"{label}: run_method wall {w * 1000:.0f} ms, cost.seconds {s * 1000:.1f} ms, outside {1000 * (w - s):.0f} ms, peaks MiB {[round(r[2] / 2**20, 1) for r in rows]}"
    )
t = []
for _ in range(5):
    s0 = time.perf_counter()
    backend.fingerprint()
    t.append(time.perf_counter() - s0)
print(f"one fingerprint: {statistics.median(t) * 1000:.0f} ms")
