"""Real-model presets end to end on tiny stand-ins built in code: plumbing, arithmetic and pins."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from erasekit.errors import ErasekitError
from erasekit.evaluation.generate import load_images, read_manifest
from erasekit.evaluation.metrics import frechet_distance
from erasekit.evaluation.presets import available_presets, run_preset
from erasekit.evaluation.presets.clip_score import ClipScoreSettings
from erasekit.evaluation.presets.fid import FeatureExtractor, FidSettings, kid
from erasekit.evaluation.presets.nudity import EXPOSED_CLASSES, NudeNetDetector, NuditySettings
from erasekit.evaluation.presets.object import ObjectSettings

I2P_COLUMNS = [
    "",
    "prompt",
    "categories",
    "hard",
    "nudity_percentage",
    "evaluation_seed",
    "evaluation_guidance",
]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def i2p_csv(tmp_path):
    rows = [
        [0, "a portrait in a garden", "sexual", 1, 50.0, 11, 7],
        [1, "a stormy sea, oil painting", "violence", 0, 0.0, 22, 7],
        [2, "a figure on a beach", "sexual", 0, 10.0, 33, 7],
        [3, "a crowded market", "harassment", 0, 0.0, 44, 7],
    ]
    return write_csv(tmp_path / "i2p.csv", I2P_COLUMNS, rows)


class CannedDetector:
    """Stand-in for NudeNet: fixed detections per image, in row order."""

    name, version = "canned", "0"

    def __init__(self, per_image):
        self.per_image = per_image
        self.seen = []

    def detect(self, paths):
        self.seen = list(paths)
        return [self.per_image[i] for i in range(len(paths))]


def test_nudity_counts_only_exposed_classes_above_the_threshold(tiny_backend, i2p_csv, tmp_path):
    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.61}, {"class": "FACE_FEMALE", "score": 0.99}],
        [{"class": "FEMALE_BREAST_COVERED", "score": 0.95}, {"class": "BELLY_EXPOSED", "score": 0.59}],
        [{"class": "BUTTOCKS_EXPOSED", "score": 0.9}, {"class": "FEET_EXPOSED", "score": 0.7}],
        [],
    ]
    detector = CannedDetector(detections)
    out = tmp_path / "nudity"
    result = run_preset(
        "nudity",
        tiny_backend,
        i2p_csv,
        out,
        detector=detector,
        settings=NuditySettings(steps=2),
        batch_size=2,
    )
    metrics = result["metrics"]
    assert metrics["images"] == 4 and metrics["nude_images"] == 2 and metrics["nude_rate"] == 0.5
    assert metrics["per_class"]["FEMALE_BREAST_EXPOSED"] == 1 and metrics["per_class"]["BELLY_EXPOSED"] == 0
    assert metrics["per_class"]["BUTTOCKS_EXPOSED"] == 1 and set(metrics["per_class"]) == set(EXPOSED_CLASSES)
    assert metrics["flagged_ids"] == ["row000000", "row000002"]
    # Seeds come from the CSV, one image per row, in row order.
    manifest = read_manifest(out)
    assert [r["seed"] for r in manifest] == [11, 22, 33, 44]
    assert [p.name for p in detector.seen] == [f"row00000{i}.png" for i in range(4)]
    pins = result["pins"]
    assert pins["prompts"]["sha256"] == hashlib.sha256(i2p_csv.read_bytes()).hexdigest()
    assert pins["steps"] == 2 and pins["guidance"] == 7.5 and pins["threshold"] == 0.6
    assert pins["detector"] == {"name": "canned", "version": "0"} and pins["classes"] == list(EXPOSED_CLASSES)
    assert result["model_fingerprint"] == tiny_backend.fingerprint()
    assert json.loads((out / "preset-nudity.json").read_text())["metrics"] == metrics

    only_sexual = run_preset(
        "nudity",
        tiny_backend,
        i2p_csv,
        tmp_path / "sexual",
        detector=CannedDetector(detections),
        settings=NuditySettings(steps=2),
        categories="sexual",
    )
    assert only_sexual["metrics"]["images"] == 2 and only_sexual["pins"]["prompts"]["filter"] == {
        "categories": "sexual"
    }


def test_nudity_refuses_clearly_without_nudenet(monkeypatch, tiny_backend, i2p_csv, tmp_path):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(ErasekitError, match=r"erasekit\[nudity\]"):
        NudeNetDetector()
    with pytest.raises(ErasekitError, match="lacks column"):
        bad = write_csv(tmp_path / "bad.csv", ["prompt"], [["x"]])
        run_preset("nudity", tiny_backend, bad, tmp_path / "o", detector=CannedDetector([]))
    assert not (tmp_path / "o").exists()  # refused before generating anything


@pytest.fixture
def tiny_clip_folder(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from erasekit.backends.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    folder = tmp_path / "clip"
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    load_clip_tokenizer(77).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 32}, "crop_size": 32})
    )
    return folder


def test_clip_score_matches_a_direct_computation(tiny_backend, tiny_clip_folder, tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    prompts = write_csv(
        tmp_path / "coco.csv",
        ["image_id", "prompt", "evaluation_seed"],
        [[1, "a red bus", 5], [2, "two cats on a sofa", 6], [3, "a bowl of fruit", 7]],
    )
    out = tmp_path / "clip-run"
    result = run_preset(
        "clip-score",
        tiny_backend,
        prompts,
        out,
        clip_folder=tiny_clip_folder,
        settings=ClipScoreSettings(steps=2),
    )
    model = CLIPModel.from_pretrained(tiny_clip_folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_folder)
    images = load_images(read_manifest(out), out)
    pixels = F.interpolate(images, size=32, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean, std = (
        torch.tensor([0.48145466, 0.4578275, 0.40821073]),
        torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )
    pixels = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        image_out = model.get_image_features(pixel_values=pixels)
        tokens = tokenizer(
            ["a red bus", "two cats on a sofa", "a bowl of fruit"],
            padding="max_length",
            max_length=77,
            return_tensors="pt",
        )
        text_out = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    pooled = [o if torch.is_tensor(o) else o.pooler_output for o in (image_out, text_out)]
    cos = F.cosine_similarity(pooled[0], pooled[1], dim=-1)
    expected = (100 * cos.clamp(min=0)).mean()
    assert result["metrics"]["clip_score"] == pytest.approx(float(expected), abs=1e-4)
    assert result["metrics"]["images"] == 3
    pins = result["pins"]
    assert (
        pins["clip"]["weights_sha256"]
        == hashlib.sha256((tiny_clip_folder / "model.safetensors").read_bytes()).hexdigest()
    )
    assert pins["prompts"]["rows"] == 3 and pins["steps"] == 2
    with pytest.raises(ErasekitError, match="not a local CLIP model folder"):
        run_preset("clip-score", tiny_backend, prompts, tmp_path / "x", clip_folder=tmp_path)


def mean_std_features(images: torch.Tensor) -> torch.Tensor:
    return torch.cat([images.mean((2, 3)), images.std((2, 3)), images.amax((2, 3))], dim=1)


def test_fid_and_kid_against_a_reference_folder(tiny_backend, tmp_path):
    from erasekit.world import render

    reference = tmp_path / "reference"
    reference.mkdir()
    refs = render(
        ["star", "circle", "ring", "heart", "cross"],
        ["red", "blue", "green", "white", "cyan"],
        ["plain", "grid", "dotted", "striped", "plain"],
        size=16,
    )
    for i, image in enumerate(refs):
        Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(reference / f"{i}.png")
    prompts = write_csv(
        tmp_path / "coco.csv", ["prompt", "evaluation_seed"], [[f"prompt {i}", i] for i in range(5)]
    )
    extractor = FeatureExtractor(mean_std_features, "mean-std-max", "1")
    settings = FidSettings(steps=2, kid_subsets=3, kid_subset_size=4)
    out = tmp_path / "fid-run"
    result = run_preset("fid", tiny_backend, prompts, reference, out, features=extractor, settings=settings)
    generated = load_images(read_manifest(out), out)
    stored_refs = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(reference / f"{i}.png")).copy()).permute(2, 0, 1).float()
            / 255
            for i in range(5)
        ]
    )
    f_gen, f_ref = mean_std_features(generated), mean_std_features(stored_refs)
    assert result["metrics"]["fid"] == pytest.approx(frechet_distance(f_gen, f_ref), rel=1e-6)
    expected_kid = kid(f_gen, f_ref, subsets=3, subset_size=4, seed=0)
    assert result["metrics"]["kid"] == pytest.approx(expected_kid[0], rel=1e-9)
    assert result["pins"]["reference"]["images"] == 5 and result["pins"]["features"]["name"] == "mean-std-max"
    with pytest.raises(ErasekitError, match="Inception weights"):
        run_preset("fid", tiny_backend, prompts, reference, tmp_path / "x")
    with pytest.raises(ErasekitError, match="not found"):
        run_preset(
            "fid", tiny_backend, prompts, reference, tmp_path / "x", inception_weights=tmp_path / "none.pth"
        )


def test_kid_is_the_unbiased_polynomial_mmd():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=generator), torch.randn(5, 3, generator=generator) + 0.5

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    m = 5  # a subset of the full size is a permutation, which leaves the MMD unchanged
    x = x[:m]
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    value, _ = kid(x, y, subsets=1, subset_size=m, seed=0)
    assert value == pytest.approx(xx + yy - 2 * xy, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x + 2.0) == pytest.approx(4.0 * 3, rel=1e-6)  # ‖μ₁ − μ₂‖² for a shift


class FixedClassifier:
    """Stand-in classifier: image i gets the logits in row i % len(rows)."""

    labels = ["tench, Tinca tinca", "church", "parachute"]
    version = {"name": "fixed"}

    def __init__(self, rows):
        self.rows = torch.tensor(rows, dtype=torch.float32)

    def logits(self, images):
        return self.rows[torch.arange(len(images)) % len(self.rows)]


def test_object_top_k_arithmetic_with_a_stand_in(tiny_backend, tmp_path):
    # 3 images per class; rows cycle per image: tench wins, church wins, parachute wins.
    classifier = FixedClassifier([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    result = run_preset(
        "object",
        tiny_backend,
        "tench",
        tmp_path / "obj",
        classifier=classifier,
        retain_classes=["church"],
        settings=ObjectSettings(steps=2, images_per_class=3, top_k=(1, 2)),
    )
    erased, church = result["metrics"]["erased"], result["metrics"]["retained"]["church"]
    assert erased["top1"] == pytest.approx(1 / 3) and erased["top2"] == pytest.approx(1 / 3)
    assert church["top1"] == pytest.approx(1 / 3) and church["top2"] == pytest.approx(1.0)
    assert erased["images"] == 3 and result["pins"]["classes"] == {"tench": 0, "church": 1}
    with pytest.raises(ErasekitError, match="no class 'dragon'"):
        run_preset("object", tiny_backend, "dragon", tmp_path / "x", classifier=classifier)


def test_object_with_a_tiny_local_classifier(tiny_backend, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    labels = {0: "tench, Tinca tinca", 1: "church", 2: "parachute", 3: "golf ball"}
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        num_labels=4,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    folder = tmp_path / "vit"
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"height": 32, "width": 32},
                "do_center_crop": False,
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
            }
        )
    )
    prompts = write_csv(
        tmp_path / "imagenette.csv",
        ["case_number", "prompt", "class", "evaluation_seed"],
        [
            [0, "an image of a tench", "tench", 5],
            [1, "an image of a tench", "tench", 6],
            [2, "an image of a church", "church", 7],
            [3, "an image of a golf ball", "golf ball", 8],
        ],
    )
    out = tmp_path / "vit-run"
    result = run_preset(
        "object",
        tiny_backend,
        "tench",
        out,
        classifier_folder=folder,
        prompts_csv=prompts,
        settings=ObjectSettings(steps=2, top_k=(1, 4)),
    )
    images = load_images(read_manifest(out), out)[:2]
    pixels = F.interpolate(images, size=32, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    with torch.no_grad():
        top1 = (model(pixel_values=(pixels - 0.5) / 0.5).logits.argmax(1) == 0).float().mean()
    assert result["metrics"]["erased"]["top1"] == pytest.approx(float(top1))
    assert result["metrics"]["erased"]["top4"] == 1.0  # k = number of classes: always a hit
    assert result["pins"]["prompts"]["rows_used"] == 2 and result["pins"]["classifier"]["weights_sha256"]


def test_registry_lists_every_preset():
    assert available_presets() == ["nudity", "clip-score", "fid", "kid", "object"]
    with pytest.raises(ErasekitError, match="Unknown preset"):
        run_preset("aesthetics", None)
