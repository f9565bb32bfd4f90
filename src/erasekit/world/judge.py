"""The ShapesWorld judge: a small CNN with one head per concept domain, trained on rendered ground truth.

The judge reads an image and names its shape, colour and background style. Shape and colour heads can
also answer "none" (no shape drawn, learned from background-only renders), so that an erased model
that draws nothing is not scored as drawing a random shape. Its penultimate features give the
ShapesWorld FID (:func:`erasekit.evaluation.metrics.frechet_distance`).

Generated images are blurrier, noisier and slightly off in colour and position compared with renders
(a small VAE decodes them), so training augments renders with exactly those corruptions; the clean
accuracy on fresh renders (≥ 99 % per domain) is measured after training and stored in ``judge.json``.

Train it (a few CPU minutes, deterministic under ``--seed``)::

    python -m erasekit.world.judge --out src/erasekit/world/assets/judge
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from erasekit.errors import ErasekitError
from erasekit.files import atomic_write
from erasekit.world.concepts import COLORS, SHAPES, STYLES
from erasekit.world.render import render_labels, sample_labels

JUDGE_DIR: Path = Path(__file__).resolve().parent / "assets" / "judge"
WEIGHTS_NAME = "judge.safetensors"
CONFIG_NAME = "judge.json"

# Class lists per head; None is the "none" class (no shape drawn). Order = logit index.
CLASSES: dict[str, tuple[str | None, ...]] = {
    "shape": (*SHAPES, None),
    "color": (*COLORS, None),
    "style": STYLES,
}
DOMAIN_NAMES: tuple[str, ...] = tuple(CLASSES)


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture and training recipe of the judge."""

    size: int = 32
    """Input side in pixels; other sizes are resized to it."""
    channels: tuple[int, int, int] = (24, 48, 96)
    """Conv widths at 32, 16 and 8 pixels."""
    feature_dim: int = 128
    """Width of the penultimate layer (the FID feature space)."""
    seed: int = 0
    """Seeds weight init, the render pool and the augmentations."""
    steps: int = 1200
    """Optimiser steps."""
    batch: int = 96
    """Images per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up over 5 % of the steps, cosine decay to 0)."""
    pool: int = 12000
    """Rendered images in the training pool (augmented afresh every time they are drawn)."""
    p_no_shape: float = 0.12
    """Share of background-only renders (teaches the "none" class)."""
    eval_images: int = 3000
    """Fresh renders (another seed) for the accuracy recorded in judge.json."""


class JudgeNet(nn.Module):
    """Conv trunk (32→16→8→4 px) → flatten → ``feature_dim`` features → one linear head per domain."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        c1, c2, c3 = config.channels

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.trunk = nn.Sequential(
            block(3, c1),
            nn.MaxPool2d(2),
            block(c1, c2),
            block(c2, c2),
            nn.MaxPool2d(2),
            block(c2, c3),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = config.size // 8
        self.features = nn.Sequential(nn.Linear(c3 * side * side, config.feature_dim), nn.ReLU())
        self.heads = nn.ModuleDict({d: nn.Linear(config.feature_dim, len(c)) for d, c in CLASSES.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.features(self.trunk(x * 2 - 1))
        return h, {d: head(h) for d, head in self.heads.items()}


class Judge:
    """A trained judge (eval mode, CPU). Inputs everywhere: float images [N, 3, H, W] in [0, 1].

    Attributes:
        config: The architecture/recipe it was trained with.
        info: Everything in ``judge.json`` (metrics, timing, versions).
    """

    def __init__(self, net: JudgeNet, config: JudgeConfig, info: dict[str, Any] | None = None):
        self.net = net.eval()
        self.config = config
        self.info = info or {}

    @property
    def classes(self) -> dict[str, tuple[str | None, ...]]:
        return dict(CLASSES)

    @property
    def version(self) -> str:
        """Content hash of the weights (recorded by evaluations that use this judge)."""
        return str(self.info.get("weights_sha256", "untracked"))[:16]

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ErasekitError(f"the judge needs images [N, 3, H, W] in [0, 1]; got {shape}")
        x = images.detach().to("cpu", torch.float32)
        if x.shape[-2:] != (self.config.size, self.config.size):
            x = F.interpolate(
                x,
                size=(self.config.size, self.config.size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return x.clamp(0, 1)

    @torch.no_grad()
    def _run(self, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self._prepare(images)
        feats, logits = [], {d: [] for d in CLASSES}
        for i in range(0, max(len(x), 1), batch):
            h, out = self.net(x[i : i + batch])
            feats.append(h)
            for d in CLASSES:
                logits[d].append(out[d])
        return torch.cat(feats), {d: torch.cat(v) for d, v in logits.items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, feature_dim] (the FID space)."""
        return self._run(images)[0]

    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per domain, class probabilities [N, n_classes] in the order of :data:`CLASSES`."""
        return {d: v.softmax(-1) for d, v in self._run(images)[1].items()}

    def predict(self, images: torch.Tensor) -> dict[str, list[str | None]]:
        """Per domain, the predicted concept name per image (None = no shape drawn)."""
        return {d: [CLASSES[d][i] for i in v.argmax(-1).tolist()] for d, v in self._run(images)[1].items()}

    def accuracy(self, images: torch.Tensor, labels: Sequence[dict]) -> dict[str, float]:
        """Share of images whose prediction equals the label, per domain present in ``labels``."""
        preds = self.predict(images)
        out = {}
        for d in CLASSES:
            pairs = [(p, lab[d]) for p, lab in zip(preds[d], labels) if d in lab]
            if pairs:
                out[d] = sum(p == t for p, t in pairs) / len(pairs)
        return out


# ---- loading / saving ------------------------------------------------------------------------------------
def _config_from_dict(data: dict[str, Any]) -> JudgeConfig:
    names = {f.name for f in dataclasses.fields(JudgeConfig)}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    return JudgeConfig(**kwargs)


def load_judge(path: str | os.PathLike | None = None) -> Judge:
    """Load a judge folder (``judge.safetensors`` + ``judge.json``); default: the shipped judge.

    Raises:
        ErasekitError: the folder lacks the files (train one with ``erasekit world judge-train``).
    """
    folder = Path(path) if path is not None else JUDGE_DIR
    weights, config_file = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if not weights.is_file() or not config_file.is_file():
        raise ErasekitError(
            f"no judge in {folder} (needs {WEIGHTS_NAME} and {CONFIG_NAME}); train one with `erasekit world judge-train --out {folder}`."
        )
    info = json.loads(config_file.read_text())
    config = _config_from_dict(info["config"])
    net = JudgeNet(config)
    net.load_state_dict(load_file(str(weights)))
    return Judge(net, config, info)


def save_judge(judge: Judge, folder: str | os.PathLike) -> Path:
    """Write ``judge.safetensors`` and ``judge.json`` atomically into ``folder``."""
    import hashlib

    folder = Path(folder)
    state = {k: v.detach().contiguous() for k, v in judge.net.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    judge.info["weights_sha256"] = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    info = {**judge.info, "config": dataclasses.asdict(judge.config)}
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2) + "\n"))
    return folder


# ---- augmentation ----------------------------------------------------------------------------------------
def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma [N], 0 = identity) with a separable 5-tap kernel."""
    n, c, h, w = x.shape
    taps = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(taps**2) / (2 * sigma.clamp(min=1e-3).view(-1, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*C, 5]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k.view(n * c, 1, 1, 5), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k.view(n * c, 1, 5, 1), groups=n * c)
    return y.view(n, c, h, w)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Corrupt renders the way a small latent diffusion model's samples differ from them.

    Per image: a shift of up to ±2 px and ±6 % scale (border padding), a Gaussian blur (σ ≤ 1.2 px),
    sometimes a down-and-up resampling, brightness ±0.06, contrast and saturation ×[0.85, 1.15],
    per-channel gain ×[0.95, 1.05], and Gaussian noise (σ ≤ 0.05). Mild enough to keep every label
    true (orange stays orange, a star stays a star).
    """
    n, _, h, w = images.shape
    scale = _uniform(n, 0.94, 1.06, generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2.0 / w) * 2  # ±2 px in [-1, 1] units
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = _gaussian_blur(x, _uniform(n, 0.0, 1.2, generator))
    resample = torch.rand(n, generator=generator) < 0.25
    if resample.any():
        low = F.interpolate(x[resample], size=(h // 2, w // 2), mode="bilinear", antialias=True)
        x[resample] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    grey = x.mean(1, keepdim=True)
    saturation = _uniform(n, 0.85, 1.15, generator).view(-1, 1, 1, 1)
    x = grey + saturation * (x - grey)
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = _uniform(n, 0.85, 1.15, generator).view(-1, 1, 1, 1)
    x = mean + contrast * (x - mean)
    x = x + _uniform(n, -0.06, 0.06, generator).view(-1, 1, 1, 1)
    x = x * (1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * 0.05)
    x = x + torch.randn(x.shape, generator=generator) * _uniform(n, 0.0, 0.05, generator).view(-1, 1, 1, 1)
    return x.clamp(0, 1)


# ---- training --------------------------------------------------------------------------------------------
def label_indices(labels: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Class indices per domain for label dicts (shape/colour None → the "none" class)."""
    return {d: torch.tensor([CLASSES[d].index(lab[d]) for lab in labels]) for d in CLASSES}


def _render_pool(n: int, seed: int, p_no_shape: float, size: int) -> tuple[torch.Tensor, list[dict]]:
    generator = torch.Generator().manual_seed(seed)
    labels = sample_labels(n, generator, p_no_shape=p_no_shape)
    chunks = [render_labels(labels[i : i + 1000], size=size, generator=generator) for i in range(0, n, 1000)]
    return torch.cat(chunks), labels


def evaluate_on_renders(
    judge: Judge, n: int, seed: int, *, p_no_shape: float = 0.12, augmented: bool = False
) -> dict[str, float]:
    """Accuracy per domain on ``n`` fresh renders (seed ≠ training seeds); also on no-shape images."""
    images, labels = _render_pool(n, seed, p_no_shape, judge.config.size)
    if augmented:
        images = augment(images, torch.Generator().manual_seed(seed + 1))
    acc = judge.accuracy(images, labels)
    empty = [i for i, lab in enumerate(labels) if lab["shape"] is None]
    if empty:
        preds = judge.predict(images[empty])
        acc["none_shape"] = sum(p is None for p in preds["shape"]) / len(empty)
        acc["none_color"] = sum(p is None for p in preds["color"]) / len(empty)
    return {k: round(v, 5) for k, v in acc.items()}


def train_judge(config: JudgeConfig = JudgeConfig(), *, progress: bool = True) -> Judge:
    """Train a judge from scratch on renders (deterministic under ``config.seed`` at a fixed thread count)."""
    from tqdm.auto import tqdm

    start = time.time()
    torch.manual_seed(config.seed)
    net = JudgeNet(config)
    images, labels = _render_pool(config.pool, config.seed + 1, config.p_no_shape, config.size)
    targets = label_indices(labels)
    render_seconds = time.time() - start
    generator = torch.Generator().manual_seed(config.seed + 2)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    warmup = max(1, config.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        progress_ = (step - warmup) / max(1, config.steps - warmup)
        return config.lr * 0.5 * (1 + torch.cos(torch.tensor(progress_ * torch.pi)).item())

    net.train()
    bar = tqdm(range(config.steps), desc="judge", disable=not progress or not sys.stderr.isatty())
    losses = []
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(len(images), (config.batch,), generator=generator)
        x = augment(images[idx], generator)
        _, logits = net(x)
        loss = sum(F.cross_entropy(logits[d], targets[d][idx]) for d in CLASSES)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    train_seconds = time.time() - start
    judge = Judge(net, config)
    eval_seed = config.seed + 1000
    judge.info = {
        "name": "erasekit ShapesWorld judge",
        "classes": {d: [c if c is not None else "none" for c in cs] for d, cs in CLASSES.items()},
        "accuracy_fresh_renders": evaluate_on_renders(judge, config.eval_images, eval_seed),
        "accuracy_augmented_renders": evaluate_on_renders(
            judge, config.eval_images, eval_seed, augmented=True
        ),
        "eval": {"images": config.eval_images, "seed": eval_seed, "p_no_shape": 0.12},
        "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 5),
        "seconds": {
            "render": round(render_seconds, 1),
            "total": round(time.time() - start, 1),
            "train": round(train_seconds, 1),
        },
        "machine": f"{os.cpu_count()} logical CPUs; torch {torch.__version__}; {torch.get_num_threads()} threads",
        "parameters": sum(p.numel() for p in net.parameters()),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return judge


def main(argv: list[str] | None = None) -> int:
    """``python -m erasekit.world.judge --out DIR``: train the judge and write it to ``DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m erasekit.world.judge", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default=str(JUDGE_DIR), help="Folder for judge.safetensors + judge.json.")
    parser.add_argument("--seed", type=int, default=JudgeConfig.seed)
    parser.add_argument("--steps", type=int, default=JudgeConfig.steps)
    parser.add_argument("--batch", type=int, default=JudgeConfig.batch)
    parser.add_argument("--pool", type=int, default=JudgeConfig.pool)
    parser.add_argument("--eval-images", type=int, default=JudgeConfig.eval_images)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("steps", "batch", "pool", "eval_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    config = JudgeConfig(
        seed=args.seed, steps=args.steps, batch=args.batch, pool=args.pool, eval_images=args.eval_images
    )
    judge = train_judge(config)
    judge.info["command"] = "python -m erasekit.world.judge " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    save_judge(judge, args.out)
    print(json.dumps({"out": args.out, **{k: judge.info[k] for k in ("accuracy_fresh_renders", "seconds")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
