"""Train the ShapesWorld reference model from scratch, on a CPU in about an hour.

Recipe (why each part is there):

1. Render a fixed dataset: every (shape, colour, style) combination × ``jitters_per_combo`` jittered
   renders, plus background-only renders. A fixed set lets stage 3 pre-encode it once.
2. Train a small ``AutoencoderKL`` (32×32 → 8×8×4, L1 + MSE, tiny KL weight). Working on an 8×8 latent
   makes every UNet step about 4× cheaper than 16×16 pixels, which is what a 2-core CPU can afford.
3. Encode the dataset once (latent mean and std); the UNet never runs the VAE encoder.
4. Train UNet and text encoder jointly: v-prediction, min-SNR-γ loss weights, AdamW with warm-up and
   cosine decay, EMA of the weights, about 10 % empty captions (for classifier-free guidance) and
   synonyms in about a third of the captions (so "crimson" lands near "red").
5. Export a diffusers ``StableDiffusionPipeline`` folder (EMA weights, float16 storage) with a manifest
   recording the command, seed, wall time, machine, images seen and final loss.

``python -m erasekit.world.train --help`` lists the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from erasekit.errors import ErasekitError
from erasekit.files import atomic_write
from erasekit.world.captions import caption
from erasekit.world.concepts import STYLES
from erasekit.world.model import build_components, micro_config, tiny_config
from erasekit.world.render import full_grid, render_labels
from erasekit.world.train_outputs import export_pipeline, run_manifest, sample_grid, save_pair


@dataclass
class TrainConfig:
    """Options of :func:`train`. Each field's docstring is its ``--help`` text."""

    out_dir: str = "runs/shapes-model"
    """Working folder: logs, checkpoints, sample grids, and the exported pipeline in ``pipeline/``."""
    export_dir: str | None = None
    """Also copy the final pipeline folder here (e.g. src/erasekit/world/assets/shapes-model)."""
    seed: int = 0
    """Seed for rendering, initialisation, batching, captions and noise."""
    arch: str = "tiny"
    """Architecture: 'tiny' (the shipped one) or 'micro' (smoke tests)."""
    threads: int = 1
    """torch.set_num_threads. 1 is fastest on a shared 2-core CPU (2 threads stall on each other when
    another process takes a core); use 2+ on a machine of your own."""
    jitters_per_combo: int = 40
    """Jittered renders per (shape, colour, style) combination in the fixed dataset."""
    no_shape_per_style: int = 160
    """Background-only renders per style in the fixed dataset."""
    vae_steps: int = 1500
    """AutoencoderKL training steps."""
    vae_batch: int = 32
    """AutoencoderKL batch size."""
    vae_lr: float = 1e-3
    """AutoencoderKL peak learning rate."""
    vae_kl_weight: float = 1e-6
    """Weight of the KL term (small: we want crisp reconstructions, not a smooth prior)."""
    vae_from: str | None = None
    """Reuse a trained VAE (a folder with vae/ from an earlier run of this recipe) instead of stage 2."""
    steps: int = 4000
    """UNet + text-encoder training steps."""
    batch: int = 64
    """UNet batch size."""
    lr: float = 1e-3
    """UNet peak learning rate (AdamW)."""
    text_lr: float = 5e-4
    """Text-encoder peak learning rate."""
    warmup: int = 200
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to the token embeddings, norms or biases)."""
    ema_decay: float = 0.999
    """Maximum EMA decay (warmed up as (1+t)/(10+t))."""
    min_snr_gamma: float = 5.0
    """Min-SNR-γ loss weighting; 0 turns it off."""
    empty_prob: float = 0.1
    """Share of empty captions (for classifier-free guidance)."""
    synonym_prob: float = 0.13
    """Per-word synonym probability (about a third of captions contain a synonym)."""
    full_caption_prob: float = 0.7
    """Share of shape captions naming all three concepts (the rest name one or two)."""
    max_minutes: float = 0.0
    """Stop UNet training after this many minutes (0: no limit) and export what there is."""
    checkpoint_minutes: float = 8.0
    """Write a resumable checkpoint and export the EMA pipeline this often."""
    resume: bool = False
    """Resume UNet training from out_dir/checkpoint.pt."""
    sample_steps: int = 25
    """DDIM steps for the sample grid written at the end (0: no grid)."""
    guidance: float = 3.0
    """Guidance scale for the sample grids."""
    log_every: int = 50
    """Log the loss every this many steps."""
    command: str = field(default="", metadata={"hidden": True})
    """The command line (recorded in the manifest)."""


def _field_help() -> dict[str, str]:
    """Field docstrings, read from this file's source (dataclass fields have no __doc__)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(TrainConfig))
    body = tree.body[0].body
    out: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
        ):
            out[prev.target.id] = str(node.value.value)
    return out


def _log(out: Path, msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(out / "train.log", "a") as f:
        f.write(line + "\n")


def _quiet() -> bool:
    return not sys.stderr.isatty()


# ----------------------------------------------------------------------------- data


def build_dataset(cfg: TrainConfig, size: int = 32) -> tuple[torch.Tensor, list[dict]]:
    """Render the fixed training set: the full grid × jitters, plus background-only images."""
    labels: list[dict] = []
    for _ in range(cfg.jitters_per_combo):
        labels += full_grid()
    for _ in range(cfg.no_shape_per_style):
        labels += [{"shape": None, "color": None, "style": s} for s in STYLES]
    g = torch.Generator().manual_seed(cfg.seed)
    chunks = []
    for i in tqdm(range(0, len(labels), 1024), desc="render", disable=_quiet()):
        chunks.append(render_labels(labels[i : i + 1024], size=size, generator=g))
    return torch.cat(chunks), labels


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))


# ----------------------------------------------------------------------------- stage 2: VAE


def train_vae(cfg: TrainConfig, vae, images: torch.Tensor, out: Path) -> dict[str, float]:
    """Train the AutoencoderKL on the rendered images; returns final losses."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    x_all = images * 2 - 1
    ema_rec = None
    for step in tqdm(range(cfg.vae_steps), desc="vae", disable=_quiet()):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _cosine(step, cfg.vae_steps, min(100, cfg.vae_steps // 10 + 1))
        idx = torch.randint(len(x_all), (cfg.vae_batch,), generator=g)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        kl = post.kl().mean()
        loss = l1 + mse + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        ema_rec = l1.item() if ema_rec is None else 0.98 * ema_rec + 0.02 * l1.item()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            _log(out, f"vae step {step} l1 {l1.item():.4f} mse {mse.item():.5f} kl {kl.item():.1f}")
    vae.eval()
    return {"vae_l1": float(ema_rec or 0.0)}


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and std of every image (unscaled)."""
    means, stds = [], []
    for i in tqdm(range(0, len(images), 512), desc="encode", disable=_quiet()):
        post = vae.encode(images[i : i + 512] * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


# ----------------------------------------------------------------------------- stage 4: UNet


class _EMA:
    """Exponential moving average of a list of parameters."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.shadow = [p.detach().clone() for p in params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


def _param_groups(unet, text_encoder, cfg: TrainConfig) -> list[dict[str, Any]]:
    def split(module):
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
        return decay, no_decay

    ud, un = split(unet)
    td, tn = split(text_encoder)
    return [
        {"params": ud, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": un, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
        {"params": td, "lr": cfg.text_lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.text_lr},
        {"params": tn, "lr": cfg.text_lr, "weight_decay": 0.0, "base_lr": cfg.text_lr},
    ]


class _Tokens:
    """Tokenizer with a cache: training captions come from a finite set."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for c, row in zip(missing, ids):
                self.cache[c] = row
        return torch.stack([self.cache[c] for c in captions])


def train(config: TrainConfig) -> Path:
    """Run the whole recipe; returns the exported pipeline folder (``out_dir/pipeline``)."""
    cfg = config
    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.arch not in ("tiny", "micro"):
        raise ErasekitError(f"unknown arch {cfg.arch!r}; use 'tiny' or 'micro'")
    arch = tiny_config() if cfg.arch == "tiny" else micro_config()
    _log(out, f"config {json.dumps(dataclasses.asdict(cfg))}")
    comps = build_components(arch)
    stats: dict[str, float] = {}
    mean, std, labels = _prepare_latents(cfg, comps, out, stats, t_start)
    run = _UNetRun(cfg, comps, out, arch, t_start, stats)
    run.train(mean, std, labels)
    folder = run.export("final")
    if cfg.export_dir:
        dest = Path(cfg.export_dir)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(folder, dest)
        _log(out, f"copied pipeline to {dest}")
    if cfg.sample_steps > 0:
        from erasekit.world.model import load_shipped_pipeline

        pipe = load_shipped_pipeline(folder)
        sample_grid(pipe, out / "samples.png", steps=cfg.sample_steps, guidance=cfg.guidance, seed=cfg.seed)
        _log(out, f"sample grid at {out / 'samples.png'}")
    _log(out, f"done in {time.time() - t_start:.0f}s")
    return folder


def _prepare_latents(cfg: TrainConfig, comps: dict, out: Path, stats: dict, t_start: float):
    """Stages 1-3: render the data set, train the VAE, encode the latents; sets the VAE scaling factor.

    A run that reuses an earlier run's VAE (vae_from) also reuses its encoded dataset when that was
    built with the same seed and sizes: it is the same data. Returns (means, stds, labels).
    """
    data_meta = {"seed": cfg.seed, "jitters": cfg.jitters_per_combo, "no_shape": cfg.no_shape_per_style}
    vae, cached = comps["vae"], None
    if cfg.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(Path(cfg.vae_from) / "vae", torch_dtype=torch.float32)
        vae.eval()
        comps["vae"] = vae
        cache_file = Path(cfg.vae_from) / "latents.pt"
        if cache_file.is_file():
            cached = torch.load(cache_file, weights_only=False)  # our own training cache, not user input
            if cached.get("meta") != data_meta:
                cached = None
    if cached is not None:
        labels, mean, std = cached["labels"], cached["mean"], cached["std"]
        _log(out, f"reused {len(labels)} encoded images from {cfg.vae_from}")
    else:
        images, labels = build_dataset(cfg)
        _log(out, f"rendered {len(images)} images in {time.time() - t_start:.0f}s")
        if not cfg.vae_from:
            stats.update(train_vae(cfg, vae, images, out))
            vae.save_pretrained(out / "vae")
        mean, std = encode_dataset(vae, images)
        torch.save({"meta": data_meta, "labels": labels, "mean": mean, "std": std}, out / "latents.pt")
        with torch.no_grad():
            rec = vae.decode(mean[:64]).sample.add(1).div(2).clamp(0, 1)
        save_pair(images[:64], rec, out / "vae_recon.png")
        del images
    scale = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scale)
    stats["scaling_factor"] = scale
    _log(
        out,
        f"data ready at {time.time() - t_start:.0f}s; latents {tuple(mean.shape)}, scaling_factor {scale:.4f}",
    )
    return mean, std, labels


class _UNetRun:
    """Stage 4: the UNet + text-encoder training loop (v-prediction, min-SNR weights, EMA, checkpoints)."""

    def __init__(self, cfg: TrainConfig, comps: dict, out: Path, arch: dict, t_start: float, stats: dict):
        self.cfg, self.comps, self.out, self.arch, self.t_start, self.stats = (
            cfg,
            comps,
            out,
            arch,
            t_start,
            stats,
        )
        self.unet, self.text_encoder = comps["unet"], comps["text_encoder"]
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.opt = torch.optim.AdamW(_param_groups(self.unet, self.text_encoder, cfg), betas=(0.9, 0.99))
        self.ema = _EMA(self.params, cfg.ema_decay)
        self.tokens = _Tokens(comps["tokenizer"])
        self.g = torch.Generator().manual_seed(cfg.seed + 2)
        self.alphas = comps["scheduler"].alphas_cumprod
        self.step, self.start_step, self.loss_avg = 0, 0, None

    def resume(self) -> None:
        checkpoint = self.out / "checkpoint.pt"
        if not (self.cfg.resume and checkpoint.is_file()):
            return
        ck = torch.load(checkpoint, weights_only=False)  # our own checkpoint, written below
        self.unet.load_state_dict(ck["unet"])
        self.text_encoder.load_state_dict(ck["text_encoder"])
        self.opt.load_state_dict(ck["opt"])
        self.ema.shadow = ck["ema"]
        self.ema.updates = ck["ema_updates"]
        self.g.set_state(ck["gen"])
        self.step = self.start_step = ck["step"]
        _log(self.out, f"resumed at step {self.start_step}")

    def loss(self, mean, std, labels) -> torch.Tensor:
        """One batch's min-SNR-weighted v-prediction loss (captions dropped with ``empty_prob``)."""
        cfg, g, alphas = self.cfg, self.g, self.alphas
        idx = torch.randint(len(mean), (cfg.batch,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * self.stats["scaling_factor"]
        empty = (torch.rand(cfg.batch, generator=g) < cfg.empty_prob).tolist()
        caps = [
            "" if e else caption(labels[i], g, cfg.synonym_prob, full_prob=cfg.full_caption_prob)
            for i, e in zip(idx.tolist(), empty)
        ]
        ids = self.tokens(caps)
        t = torch.randint(0, self.comps["scheduler"].config.num_train_timesteps, (cfg.batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        target = a * noise - s * z0  # v-prediction
        pred = self.unet(a * z0 + s * noise, t, self.text_encoder(ids)[0]).sample
        per = (pred - target).pow(2).mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma > 0:
            snr = alphas[t] / (1 - alphas[t])
            per = per * (torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1))
        return per.mean()

    def train(self, mean, std, labels) -> None:
        cfg = self.cfg
        self.resume()
        self.unet.train()
        self.text_encoder.train()
        t_unet = last_ck = time.time()
        bar = tqdm(total=cfg.steps, initial=self.start_step, desc="unet", disable=_quiet())
        while self.step < cfg.steps:
            for group in self.opt.param_groups:
                group["lr"] = group["base_lr"] * _cosine(self.step, cfg.steps, cfg.warmup)
            loss = self.loss(mean, std, labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.ema.update()
            self.step += 1
            bar.update(1)
            self.loss_avg = (
                loss.item() if self.loss_avg is None else 0.99 * self.loss_avg + 0.01 * loss.item()
            )
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = (self.step - self.start_step) * cfg.batch / (time.time() - t_unet)
                _log(
                    self.out,
                    f"step {self.step} loss {loss.item():.4f} avg {self.loss_avg:.4f} "
                    f"lr {self.opt.param_groups[0]['lr']:.2e} {rate:.0f} img/s",
                )
            if cfg.checkpoint_minutes > 0 and time.time() - last_ck > cfg.checkpoint_minutes * 60:
                self.checkpoint()
                last_ck = time.time()
            if cfg.max_minutes > 0 and time.time() - t_unet > cfg.max_minutes * 60:
                _log(self.out, f"max_minutes reached at step {self.step}; stopping early")
                break
        bar.close()
        self.stats["unet_seconds"] = time.time() - t_unet

    def checkpoint(self) -> None:
        state = {
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema.shadow,
            "ema_updates": self.ema.updates,
            "gen": self.g.get_state(),
            "step": self.step,
        }
        atomic_write(self.out / "checkpoint.pt", lambda tmp: torch.save(state, tmp))
        self.export("checkpoint")

    def export(self, tag: str) -> Path:
        """Export the EMA weights as a pipeline folder; the live weights stay for further training."""
        live = [p.detach().clone() for p in self.params]
        self.ema.copy_to(self.params)
        stats = {k: v for k, v in self.stats.items() if k != "scaling_factor"}
        manifest = run_manifest(
            self.cfg, self.arch, self.t_start, self.step, self.loss_avg, stats, self.stats["scaling_factor"]
        )
        folder = self.out / "pipeline"
        export_pipeline(self.comps, folder, manifest)
        with torch.no_grad():
            for p, v in zip(self.params, live):
                p.copy_(v)
        _log(self.out, f"exported EMA pipeline ({tag}) at step {self.step}")
        return folder


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m erasekit.world.train",
        description="Train the ShapesWorld reference model from scratch.",
    )
    helps = _field_help()
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("hidden"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name)
            )
        else:
            typ = {"int": int, "float": float, "str": str, "str | None": str}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default, help=helps.get(f.name))
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: parse ``argv`` into a :class:`TrainConfig` and run :func:`train`."""
    args = _parser().parse_args(argv)
    cfg = TrainConfig(**vars(args))
    cfg.command = "python -m erasekit.world.train " + " ".join(sys.argv[1:] if argv is None else argv)
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
