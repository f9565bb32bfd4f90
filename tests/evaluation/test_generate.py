"""Generation with a manifest: one PNG + one fsynced line per row, resume after interruption, shards."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from erasekit.errors import ErasekitError
from erasekit.evaluation.generate import (
    MANIFEST,
    generate_rows,
    load_images,
    merge_manifests,
    read_manifest,
    read_manifest_file,
)

STEPS, GUIDANCE = 3, 4.0


def make_rows(n: int) -> list[dict]:
    prompts = ["a red star", "a blue circle", "a green ring on a striped background"]
    return [
        {
            "id": f"r{i:03d}",
            "prompt": prompts[i % 3],
            "seed": 100 + i,
            "labels": {"shape": "star"},
            "group": "g",
        }
        for i in range(n)
    ]


class Interrupt(Exception):
    pass


class FailingBackend:
    """Wraps a backend; raises on the ``fail_at``-th call to ``sample`` (a crash mid-run)."""

    def __init__(self, backend, fail_at: int):
        self.backend, self.fail_at, self.calls = backend, fail_at, 0

    def fingerprint(self):
        return self.backend.fingerprint()

    def sample(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupt
        return self.backend.sample(*args, **kwargs)


def hashes(folder: Path) -> dict[str, str]:
    return {r["id"]: r["sha256"] for r in read_manifest(folder)}


def test_manifest_has_one_row_per_image_with_its_seed_and_hash(tiny_backend, tmp_path):
    rows = make_rows(5)
    out = generate_rows(tiny_backend, rows, tmp_path, steps=STEPS, guidance=GUIDANCE, batch_size=2)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert len(lines) == 5
    for line, row in zip(lines, rows):
        entry = json.loads(line)
        assert entry["prompt"] == row["prompt"] and entry["seed"] == row["seed"]
        assert entry["labels"] == {"shape": "star"} and entry["group"] == "g"  # extra fields kept
        assert entry["steps"] == STEPS and entry["guidance"] == GUIDANCE and entry["batch_size"] == 2
        data = (tmp_path / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    images = load_images(out, tmp_path)
    assert images.shape == (5, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
    # the image depends on the seed: rows 0 and 3 share a prompt but not a seed
    assert out[0]["sha256"] != out[3]["sha256"]


def test_resume_after_a_crash_gives_identical_images(tiny_backend, tmp_path):
    rows = make_rows(7)
    full = generate_rows(tiny_backend, rows, tmp_path / "full", steps=STEPS, guidance=GUIDANCE, batch_size=2)

    crashing = FailingBackend(tiny_backend, fail_at=3)  # dies on the third batch: 4 rows written
    with pytest.raises(Interrupt):
        generate_rows(crashing, rows, tmp_path / "resumed", steps=STEPS, guidance=GUIDANCE, batch_size=2)
    assert len(read_manifest(tmp_path / "resumed")) == 4

    counting = FailingBackend(tiny_backend, fail_at=-1)
    resumed = generate_rows(
        counting, rows, tmp_path / "resumed", steps=STEPS, guidance=GUIDANCE, batch_size=2
    )
    assert counting.calls == 2  # only the two missing batches were generated
    assert [r["sha256"] for r in resumed] == [r["sha256"] for r in full]
    assert torch.equal(load_images(resumed, tmp_path / "resumed"), load_images(full, tmp_path / "full"))
    # a rerun of a finished folder generates nothing
    idle = FailingBackend(tiny_backend, fail_at=-1)
    generate_rows(idle, rows, tmp_path / "resumed", steps=STEPS, guidance=GUIDANCE, batch_size=2)
    assert idle.calls == 0


def test_torn_last_line_is_ignored_and_repaired(tiny_backend, tmp_path):
    rows = make_rows(4)
    generate_rows(tiny_backend, rows[:2], tmp_path, steps=STEPS, guidance=GUIDANCE, batch_size=2)
    with open(tmp_path / MANIFEST, "a") as handle:
        handle.write('{"id": "r002", "prompt": "a red st')  # killed mid-write
    assert [r["id"] for r in read_manifest(tmp_path)] == ["r000", "r001"]
    generate_rows(tiny_backend, rows, tmp_path, steps=STEPS, guidance=GUIDANCE, batch_size=2)
    text = (tmp_path / MANIFEST).read_text()
    assert text.endswith("\n")
    assert [json.loads(line)["id"] for line in text.splitlines()] == ["r000", "r001", "r002", "r003"]


def test_a_corrupt_middle_line_is_an_error(tmp_path):
    (tmp_path / MANIFEST).write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ErasekitError, match="line 2"):
        read_manifest_file(tmp_path / MANIFEST)


def test_resume_with_other_settings_or_rows_is_refused(tiny_backend, tmp_path):
    rows = make_rows(2)
    generate_rows(tiny_backend, rows, tmp_path, steps=STEPS, guidance=GUIDANCE, batch_size=2)
    with pytest.raises(ErasekitError, match="steps"):
        generate_rows(tiny_backend, rows, tmp_path, steps=STEPS + 1, guidance=GUIDANCE, batch_size=2)
    changed = [dict(rows[0], seed=999), rows[1]]
    with pytest.raises(ErasekitError, match="r000"):
        generate_rows(tiny_backend, changed, tmp_path, steps=STEPS, guidance=GUIDANCE, batch_size=2)


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"id": "a", "prompt": "x", "seed": 1}, {"id": "a", "prompt": "y", "seed": 2}], "twice"),
        ([{"id": "a/b", "prompt": "x", "seed": 1}], "id"),
        ([{"id": "a", "prompt": "x", "seed": -1}], "seed"),
        ([{"id": "a", "prompt": "x", "seed": True}], "seed"),
        ([{"id": "a", "prompt": 3, "seed": 1}], "prompt"),
    ],
)
def test_bad_rows_are_user_errors(tiny_backend, tmp_path, rows, match):
    with pytest.raises(ErasekitError, match=match):
        generate_rows(tiny_backend, rows, tmp_path, steps=STEPS, guidance=GUIDANCE)


def test_shards_merge_to_the_single_process_result(tiny_backend, tmp_path):
    rows = make_rows(7)
    single = generate_rows(tiny_backend, rows, tmp_path / "one", steps=STEPS, guidance=GUIDANCE, batch_size=2)
    part0 = generate_rows(
        tiny_backend, rows, tmp_path / "two", steps=STEPS, guidance=GUIDANCE, batch_size=2, shard=(0, 2)
    )
    assert [r["id"] for r in part0] == ["r000", "r001", "r004", "r005"]  # batches 0 and 2
    with pytest.raises(ErasekitError, match="not generated"):
        merge_manifests(tmp_path / "two", rows)
    generate_rows(
        tiny_backend, rows, tmp_path / "two", steps=STEPS, guidance=GUIDANCE, batch_size=2, shard=(1, 2)
    )
    merged = merge_manifests(tmp_path / "two", rows)
    assert merged.read_text() == (tmp_path / "one" / MANIFEST).read_text()
    assert not list((tmp_path / "two").glob("manifest.shard-*"))
    assert [r["sha256"] for r in single] == [r["sha256"] for r in read_manifest(tmp_path / "two")]
    with pytest.raises(ErasekitError, match="shard"):
        generate_rows(tiny_backend, rows, tmp_path / "x", steps=STEPS, guidance=GUIDANCE, shard=(2, 2))


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from erasekit.zoo import load_model as load_backend
from erasekit.evaluation.generate import generate_rows
rows = [{"id": f"k{i:03d}", "prompt": ["a red star", "a blue ring"][i % 2], "seed": i} for i in range(16)]
generate_rows(load_backend("tiny"), rows, sys.argv[1], steps=2, guidance=3.0, batch_size=1, progress=False)
"""


def test_killed_process_resumes_to_identical_numbers(tiny_backend, tmp_path):
    """SIGKILL a generating subprocess midway, resume here, compare with an uninterrupted run."""
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(killed)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        manifest = killed / MANIFEST
        if manifest.is_file() and manifest.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done_before = len(read_manifest(killed))
    assert 3 <= done_before < 16, "the child should have been killed midway"

    rows = [{"id": f"k{i:03d}", "prompt": ["a red star", "a blue ring"][i % 2], "seed": i} for i in range(16)]
    resumed = generate_rows(tiny_backend, rows, killed, steps=2, guidance=3.0, batch_size=1)
    full = generate_rows(tiny_backend, rows, tmp_path / "full", steps=2, guidance=3.0, batch_size=1)
    assert [r["sha256"] for r in resumed] == [r["sha256"] for r in full]
    assert (killed / MANIFEST).read_text().count("\n") == 16
