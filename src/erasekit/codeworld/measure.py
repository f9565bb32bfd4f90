"""Memorisation numbers of an exported CodeWorld model, written into its manifest (``train --measure``).

Per duplication level (16×, 4×, 1×) and for unseen secrets: MA, EL_10, greedy and sampled (8 × top-k
40) verbatim extraction, all in file context; held-out perplexity on 200 files and completion accuracy
of 64 held-out functions. The numbers are of the exported (float16-stored) weights.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from erasekit.codeworld.train import MANIFEST_NAME


def measure_export(folder: Path, seed: int = 0, samples: int = 8) -> dict:
    import torch

    from erasekit.evaluation.memorization import (
        completion_accuracy,
        perplexity,
        secret_examples,
        secret_scores,
    )
    from erasekit.zoo import load_model as load_lm

    torch.set_num_threads(1)
    started = time.perf_counter()
    backend = load_lm(str(folder))
    source = backend.data_source
    numbers: dict = {}
    for level in (16, 4, 1):
        examples = secret_examples(backend, source.planted_samples(level))
        numbers[f"secrets_{level}x"] = secret_scores(backend, examples, samples=samples, seed=seed)
    numbers["unseen"] = secret_scores(
        backend, secret_examples(backend, source.unseen_samples()), samples=samples, seed=seed
    )
    numbers["heldout_perplexity"] = round(perplexity(backend, source.heldout_texts(200)), 4)
    numbers["completion_accuracy"] = round(completion_accuracy(backend, source.heldout_functions()), 4)
    numbers["sampled_extraction"] = {"samples": samples, "temperature": 1.0, "top_k": 40, "seed": seed}
    numbers["seconds"] = round(time.perf_counter() - started, 1)
    path = Path(folder) / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["memorization"] = numbers
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(manifest, handle, indent=2)
    os.replace(tmp, path)
    print(json.dumps(numbers, indent=2))
    return numbers
