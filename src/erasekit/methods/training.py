"""The scaffold every fine-tuning method shares: train named parameters in place, then emit deltas.

A method that optimises some of the model's own parameters (ESD, few-shot unlearning, All-but-One)
must leave the caller's model exactly as it found it and return only what changed. That is the same
four steps everywhere — copy the targets, train them, read the deltas, restore the originals (also
when training fails) — so it lives here once::

    with TrainedParameters(backend.parameters_for(target)) as trained:
        report = train(trained.params)          # autograd on, requires_grad set on the targets
        artifact = trained.delta_artifact(name)  # Δ = trained − original, changed tensors only
    # here every parameter holds its original value again, requires_grad off, no .grad left

:func:`trajectory_states` is the other shared piece: the DDIM states a model visits for some prompts,
the inputs of the teacher caches (All-but-One's guidance terms, ESD's retain term).

Imports torch only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from erasekit.artifacts import Artifact


class TrainedParameters:
    """Context manager that trains ``params`` in place and restores them bit-exactly on exit.

    Attributes:
        params: The parameters being trained (the caller's own tensors).
        originals: A detached copy of each parameter's value on entry (θ₀ / θ* in the papers).
    """

    def __init__(self, params: Mapping[str, nn.Parameter]):
        self.params = dict(params)
        self.originals: dict[str, torch.Tensor] = {}
        self._grad_mode = torch.is_grad_enabled()

    def __enter__(self) -> TrainedParameters:
        self.originals = {n: p.detach().clone() for n, p in self.params.items()}
        self._grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(True)  # callers may hold no_grad; training needs autograd
        for p in self.params.values():
            p.requires_grad_(True)
        return self

    def deltas(self) -> dict[str, torch.Tensor]:
        """Trained minus original value of every parameter (zero where training left it alone)."""
        return {n: p.detach() - self.originals[n] for n, p in self.params.items()}

    def delta_artifact(self, method: str) -> Artifact:
        """An artifact holding the non-zero deltas (mode ``delta``), so unchanged tensors stay out."""
        return delta_artifact(method, self.deltas())

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.originals[name])
                p.requires_grad_(False)
                p.grad = None
        torch.set_grad_enabled(self._grad_mode)


def delta_artifact(method: str, deltas: Mapping[str, torch.Tensor]) -> Artifact:
    """An artifact of ``method`` holding the non-zero ``deltas`` (mode ``delta``)."""
    artifact = Artifact(method)
    for name, delta in deltas.items():
        if delta.abs().max() > 0:
            artifact.add_weight(name, delta, mode="delta")
    return artifact


@torch.no_grad()
def trajectory_states(
    backend: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every intermediate DDIM state of each (prompt, seed), sampled by the backend's current weights
    with classifier-free ``guidance``: latents [N·steps, ...], their timesteps, and each state's prompt
    index. ``size``: image side in pixels (None = the model's default)."""
    cond = backend.encode_prompts(prompts)
    uncond = backend.encode_prompts([""] * len(prompts))
    latents = backend.initial_latents(seeds, size=size)
    timesteps = backend.sampling_timesteps(steps)
    states, ts, owners = [], [], []
    for k in range(steps):
        states.append(latents)
        ts.append(torch.full((len(prompts),), int(timesteps[k]), dtype=torch.long))
        owners += list(range(len(prompts)))
        latents = backend.denoise(latents, cond, uncond, steps=steps, guidance=guidance, start=k, stop=k + 1)
    return torch.cat(states), torch.cat(ts).to(latents.device), owners


def predictions(
    backend: Any, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """``backend.predict_noise`` over states ``x`` at timesteps ``t`` with per-state ``cond``, in chunks."""
    return torch.cat(
        [
            backend.predict_noise(x[i : i + chunk], t[i : i + chunk], cond[i : i + chunk])
            for i in range(0, x.shape[0], chunk)
        ]
    )
