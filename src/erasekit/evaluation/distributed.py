"""Scaled-out evaluation: shard the prompt rows across processes with 🤗 accelerate, merge deterministically.

Launch the same command on every process — ``accelerate launch -m erasekit evaluate …`` (one process
per GPU, one or many machines), or ``erasekit evaluate --processes N …`` (N local processes, CPU or
GPU; it relaunches itself under ``torch.distributed.run``). Every process loads the model and the
artifacts; then

* the **main process** runs the evaluation as usual, with a *sharded* generator in place of
  :func:`~erasekit.evaluation.generate.generate_rows`. Each time it needs a grid generated it
  broadcasts the job (rows, folder, sampler settings, whether the artifacts are applied);
* **every process** (main included) generates its shard, ``generate_rows(..., shard=(rank, world))``:
  batches ``rank, rank + world, …`` of the fixed batch layout, into its own shard manifest;
* after a barrier the main process merges the shard manifests into ``manifest.jsonl`` in row order
  (:func:`~erasekit.evaluation.generate.merge_manifests`) and scores the PNGs alone.

Each image depends only on its prompt, seed and batch position, never on which process drew it, so
the numbers are identical to a single-process run (the test checks this with 2 CPU processes). The run
folder must be on a file system all processes see (local disk for one machine; shared storage across
machines). Only the main process writes results; attacks, if any, run on the main process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from erasekit.errors import ErasekitError

_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """Processes of the current launch (1 when not launched by accelerate / torchrun / MPI)."""
    for name in _WORLD_ENV:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def relaunch(processes: int, argv: Sequence[str] | None = None) -> int:
    """Run this CLI command again as ``processes`` local processes (``torch.distributed.run``); its exit code.

    ``--processes N`` is dropped from the arguments, so the children run as launched workers.
    """
    if processes < 1:
        raise ErasekitError(f"--processes must be at least 1, not {processes}.")
    args = list(sys.argv[1:] if argv is None else argv)
    cleaned, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        cleaned.append(arg)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N processes on shared cores: one torch thread each
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "erasekit",
        *cleaned,
    ]
    return subprocess.call(command, env=env)


def _state(device: str) -> Any:
    from accelerate import PartialState

    cpu = device == "cpu"
    return PartialState(cpu=cpu)


class ShardedGenerator:
    """``generate_rows`` for the main process: broadcast the job, generate this shard, merge.

    Workers run the same jobs through :meth:`serve`. Call :meth:`close` on the main process when the
    evaluation is done (it releases the workers), also after an error.
    """

    def __init__(self, state: Any):
        self.state = state

    def _broadcast(self, job: dict | None) -> dict | None:
        from accelerate.utils import broadcast_object_list

        box = [job]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def _generate(self, backend: Any, job: dict) -> list[dict]:
        from erasekit.evaluation.generate import generate_rows, merge_manifests, read_manifest

        rows, folder = job["rows"], Path(job["out_dir"])
        options = {k: job[k] for k in ("steps", "guidance", "batch_size", "negative_prompt", "size")}
        rank, world = self.state.process_index, self.state.num_processes
        failure = None
        try:
            generate_rows(
                backend, rows, folder, shard=(rank, world), progress=job["progress"] and rank == 0, **options
            )
        except ErasekitError as error:  # keep the processes in step; the main process re-raises
            failure = str(error)
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            return []
        if failure is not None:
            raise ErasekitError(failure)
        merge_manifests(folder, rows)
        done = {r["id"]: r for r in read_manifest(folder)}
        return [done[r["id"]] for r in rows]

    def __call__(
        self,
        backend: Any,
        rows: Sequence[dict],
        out_dir: str | os.PathLike,
        *,
        steps: int,
        guidance: float,
        batch_size: int = 8,
        progress: bool = True,
        negative_prompt: str = "",
        size: int | None = None,
        shard: tuple[int, int] | None = None,
    ) -> list[dict]:
        from erasekit.applying import applied_artifacts

        job = {
            "rows": [dict(r) for r in rows],
            "out_dir": str(out_dir),
            "steps": steps,
            "guidance": guidance,
            "batch_size": batch_size,
            "progress": progress,
            "negative_prompt": negative_prompt,
            "size": size,
            "applied": bool(applied_artifacts(backend)),
        }
        self._broadcast(job)
        return self._generate(backend, job)

    def serve(self, backend: Any, artifacts: Sequence[Any], *, force: bool = False) -> int:
        """Worker loop: run broadcast jobs with or without ``artifacts`` applied; returns jobs done."""
        from erasekit.applying import applied_artifacts, apply, revert

        jobs = 0
        while (job := self._broadcast(None)) is not None:
            if job["applied"] and not applied_artifacts(backend):
                for artifact in artifacts:
                    apply(artifact, backend, force=force)
            elif not job["applied"] and applied_artifacts(backend):
                revert(backend)
            self._generate(backend, job)
            jobs += 1
        return jobs

    def close(self) -> None:
        self._broadcast(None)


def run_sharded(
    evaluate: Callable[[Any, Callable[..., list[dict]]], dict],
    *,
    model: str,
    artifacts: Sequence[str | os.PathLike] = (),
    force: bool = False,
    device: str = "cpu",
) -> dict | None:
    """Run ``evaluate(backend, generate)`` on the main process with the work shared by every process.

    Args:
        evaluate: Called on the main process only, with its backend (no artifacts applied) and the
            sharded ``generate`` to pass on (e.g. to ``evaluate_shapesworld(..., generate=generate)``).
        model: Loaded by every process (``load_backend(model)``) on the process's device.
        artifacts: Paths loaded by the workers (applied when the main process generates with its own
            artifacts applied).
        force, device: As for the evaluate command (under accelerate on GPUs each process takes its
            own device).

    Returns:
        ``evaluate``'s result on the main process; None on the others.
    """
    from erasekit.artifacts import Artifact
    from erasekit.zoo import load_model as load_backend

    state = _state(device)
    process_device = str(state.device) if device != "cpu" else "cpu"
    backend = load_backend(model, device=process_device)
    generator = ShardedGenerator(state)
    if not state.is_main_process:
        generator.serve(backend, [Artifact.load(path) for path in artifacts], force=force)
        state.wait_for_everyone()
        return None
    try:
        return evaluate(backend, generator)
    finally:
        generator.close()
        state.wait_for_everyone()
