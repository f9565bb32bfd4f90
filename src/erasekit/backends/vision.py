"""Image models the real-model presets score with: a CLIP model and an image classifier, from local folders.

This is the only evaluation glue that imports transformers (the project keeps transformers inside
``backends/``). Both load offline from a folder the user names (``from_pretrained`` with
``local_files_only`` and safetensors only: no download, no unpickling) and take images as float
tensors [N, 3, H, W] in [0, 1]. Preprocessing is done in torch from the folder's
``preprocessor_config.json`` (resize the short side, centre-crop, normalise), so no image-processor
class (and no torchvision) is needed and the steps are visible here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from erasekit.backends import _quiet  # noqa: F401
from erasekit.errors import ErasekitError

# OpenAI CLIP normalisation (used when a folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.safetensors")


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``resize``, centre-crop to ``crop``, normalise with ``mean``/``std``."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ErasekitError(f"Expected images [N, 3, H, W] in [0, 1]; got shape {tuple(images.shape)}.")
        x = images.float().clamp(0, 1)
        h, w = x.shape[-2:]
        scale = self.resize / min(h, w)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


def _side(value: object, default: int) -> int:
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
        return default
    return int(value) if value is not None else default


def read_preprocess(folder: Path, image_size: int) -> Preprocess:
    """Preprocessing from ``preprocessor_config.json`` (CLIP defaults at ``image_size`` without one)."""
    file = folder / "preprocessor_config.json"
    config = json.loads(file.read_text()) if file.is_file() else {}
    resize = _side(config.get("size"), image_size) if config.get("do_resize", True) else image_size
    crop = _side(config.get("crop_size"), image_size) if config.get("do_center_crop", True) else resize
    mean = tuple(config.get("image_mean", CLIP_MEAN))
    std = tuple(config.get("image_std", CLIP_STD))
    return Preprocess(resize=resize, crop=crop, mean=mean, std=std)


def weights_sha256(folder: Path) -> str:
    """sha256 of the folder's safetensors weights (pins the exact model in manifests)."""
    for name in _WEIGHT_FILES:
        file = folder / name
        if file.is_file():
            digest = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        digest = hashlib.sha256()
        for file in shards:
            digest.update(file.read_bytes())
        return digest.hexdigest()
    raise ErasekitError(
        f"{folder} has no .safetensors weights; convert the model to safetensors (we never unpickle)."
    )


def _check_folder(folder: str | os.PathLike, what: str) -> Path:
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ErasekitError(
            f"{path} is not a local {what} folder (no config.json); pass a folder saved with save_pretrained."
        )
    return path


class ClipScorer:
    """CLIP image–text similarity from a local folder: ``score = 100 · max(cos(E_I(x), E_T(p)), 0)``.

    The definition of Hessel et al. (2021) with w = 100 as in torchmetrics' ``CLIPScore``.
    """

    def __init__(self, folder: str | os.PathLike, device: str = "cpu"):
        from transformers import CLIPModel, CLIPTokenizer

        self.folder = _check_folder(folder, "CLIP model")
        try:
            self.model = CLIPModel.from_pretrained(self.folder, local_files_only=True, use_safetensors=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ErasekitError(
                f"Could not load a CLIP model and tokenizer from {self.folder} ({type(error).__name__}); it needs config.json, model.safetensors, vocab.json and merges.txt."
            ) from None
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.preprocess = read_preprocess(self.folder, int(self.model.config.vision_config.image_size))
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.version = {"folder": str(self.folder), "weights_sha256": weights_sha256(self.folder)}

    @staticmethod
    def _pooled(output: object) -> torch.Tensor:
        # transformers 4 returns the projected embedding, 5 a ModelOutput whose pooler_output holds it.
        return output if torch.is_tensor(output) else output.pooler_output

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device)
        return F.normalize(self._pooled(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        output = self.model.get_text_features(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        )
        return F.normalize(self._pooled(output).float(), dim=-1)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Per pair (image i, prompt i): 100 · max(cos, 0), float32 [N] on CPU."""
        if len(images) != len(prompts):
            raise ErasekitError(
                f"Got {len(images)} images but {len(prompts)} prompts; pass one prompt per image."
            )
        cos = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(-1)
        return (100 * cos.clamp(min=0)).cpu()


class ImageClassifier:
    """A Hugging Face image classifier (``AutoModelForImageClassification``) from a local folder."""

    def __init__(self, folder: str | os.PathLike, device: str = "cpu"):
        from transformers import AutoModelForImageClassification

        self.folder = _check_folder(folder, "image classifier")
        try:
            self.model = AutoModelForImageClassification.from_pretrained(
                self.folder, local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError) as error:
            raise ErasekitError(
                f"Could not load an image classifier from {self.folder} ({type(error).__name__}); it needs config.json and model.safetensors."
            ) from None
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        config = self.model.config
        self.labels: list[str] = [str(config.id2label[i]) for i in range(config.num_labels)]
        size = getattr(config, "image_size", 224)
        self.preprocess = read_preprocess(self.folder, int(size if isinstance(size, int) else size[0]))
        self.version = {"folder": str(self.folder), "weights_sha256": weights_sha256(self.folder)}

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Class logits [N, C] (float32, CPU)."""
        out = [
            self.model(pixel_values=self.preprocess(images[i : i + batch_size]).to(self.device))
            .logits.float()
            .cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))
