"""A small VQ-VAE image tokenizer (images <-> a grid of discrete codes), in plain torch.

The quantizer follows LlamaGen's VQ-16 (the tokenizer of Janus-Pro): the encoder output and the
codebook are l2-normalised, so the nearest code by Euclidean distance is the code of highest cosine
similarity (argmin ||z - e||^2 = argmax z·e when ||e|| = 1). The codebook is stored unit-norm, which
makes our indices identical to a decoder that re-normalises (as HF's ``JanusVQVAE`` does).

Training (``world/ar_train.py``) uses the straight-through estimator, a codebook + commitment loss
(van den Oord et al. 2017, eq. 3) and a dead-code restart; this module only holds the model and its
folder format (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from erasekit.errors import ErasekitError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class VQConfig:
    """Architecture of :class:`VQVAE`."""

    image_size: int = 32
    """Side of the (square) input images in pixels."""
    channels: tuple[int, ...] = (32, 64, 128)
    """Channels at each resolution; each level after the first halves the side."""
    codebook_size: int = 512
    """Number of codes."""
    embed_dim: int = 8
    """Dimension of a code (LlamaGen uses 8)."""

    @property
    def grid(self) -> int:
        """Side of the code grid (image_size / 2^(levels-1))."""
        return self.image_size // 2 ** (len(self.channels) - 1)


class _Res(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()
        )
        self.out = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.block(x))


class VQVAE(nn.Module):
    """Encoder -> cosine vector quantizer -> decoder. Images are float [N, 3, H, W] in [0, 1]."""

    def __init__(self, config: VQConfig = VQConfig()):
        super().__init__()
        self.config = config
        ch = config.channels
        enc: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1), _Res(ch[0])]
        for a, b in zip(ch, ch[1:]):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), _Res(b)]
        enc += [nn.GroupNorm(8, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], config.embed_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(config.embed_dim, ch[-1], 3, padding=1), _Res(ch[-1])]
        rev = ch[::-1]
        for a, b in zip(rev, rev[1:]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1), _Res(b)]
        dec += [nn.GroupNorm(8, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.codebook = nn.Parameter(F.normalize(torch.randn(config.codebook_size, config.embed_dim), dim=1))

    # ---- pieces --------------------------------------------------------------------------------
    def encode_continuous(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm encoder output z [N, D, g, g]."""
        return F.normalize(self.encoder(images * 2 - 1), dim=1)

    def unit_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices [N, g, g] of unit-norm z [N, D, g, g] (highest cosine similarity)."""
        sims = torch.einsum("ndhw,kd->nkhw", z, self.unit_codebook())
        return sims.argmax(1)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors [N, D, g, g] of indices [N, g, g] or [N, g*g]."""
        if indices.ndim == 2:
            g = self.config.grid
            indices = indices.view(-1, g, g)
        return self.unit_codebook()[indices].permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Code indices [N, g*g] (row-major raster order, the order the AR model generates)."""
        return self.nearest(self.encode_continuous(images)).flatten(1)

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] from code indices [N, g*g]."""
        return self.decode(self.embed(indices))

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return ((self.decoder(zq) + 1) / 2).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction in [-1,1] space, z, quantized e) with straight-through."""
        z = self.encode_continuous(images)
        idx = self.nearest(z)
        e = self.embed(idx)
        zq = z + (e - z).detach()  # straight-through estimator
        return self.decoder(zq), z, e


def save_vqvae(model: VQVAE, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (codebook stored unit-norm) atomically."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    state["codebook"] = model.unit_codebook().detach().to(dtype).contiguous()
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out / WEIGHTS_NAME)
    cfg = asdict(model.config)
    tmp_cfg = out / (CONFIG_NAME + ".tmp")
    tmp_cfg.write_text(json.dumps({"model_type": "erasekit_vqvae", **cfg}, indent=2))
    os.replace(tmp_cfg, out / CONFIG_NAME)
    return out


def load_vqvae(folder: str | os.PathLike) -> VQVAE:
    """Load a folder written by :func:`save_vqvae` (float32, eval mode, no grad)."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise ErasekitError(f"{folder} is not a VQ-VAE folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}).")
    data = json.loads((folder / CONFIG_NAME).read_text())
    cfg = VQConfig(
        image_size=int(data["image_size"]),
        channels=tuple(int(c) for c in data["channels"]),
        codebook_size=int(data["codebook_size"]),
        embed_dim=int(data["embed_dim"]),
    )
    model = VQVAE(cfg)
    state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval()
