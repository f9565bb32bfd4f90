"""Vectorised, seeded procedural renderer for ShapesWorld.

One shape per image, centred with a small jitter in position (±3 % of the side), size (±10 %) and
colour (±0.04 per channel), on a grey-toned background texture. Backgrounds stay grey so that no
background can be mistaken for a shape colour. Images are drawn at 4× resolution and box-filtered down,
so edges are anti-aliased and the renders look the same at every ``size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from erasekit.errors import ErasekitError
from erasekit.world.concepts import COLORS, SHAPES, STYLES, check_concept

# RGB in [0, 1]; saturated or bright so they stand apart from the grey backgrounds (all in 0.2-0.62).
COLOR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.72, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.58, 0.12, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.98, 0.98, 0.98),
    "cyan": (0.10, 0.85, 0.90),
}

RADIUS = 0.30  # shape circumradius as a fraction of the side
POS_JITTER = 0.03
SIZE_JITTER = 0.10
COLOR_JITTER = 0.04
_SUPERSAMPLE = 4


def _grid(res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [0, 1], y pointing down; shape [res, res] each."""
    c = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    return torch.meshgrid(c, c, indexing="xy")


def _shape_mask(shape: str, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Boolean mask of ``shape`` for centred coordinates x, y [n, H, W] and radius r [n, 1, 1]."""
    if shape == "circle":
        return x**2 + y**2 < (0.92 * r) ** 2
    if shape == "square":
        return torch.maximum(x.abs(), y.abs()) < 0.78 * r
    if shape == "triangle":
        # Equilateral, apex up: three half-planes at inradius r/2 (circumradius r); shifted down a little
        # so its visual centre sits at the image centre.
        yy = y - 0.12 * r
        inr = 0.55 * r
        n1 = yy  # bottom edge, normal pointing down
        n2 = -0.5 * yy + (math.sqrt(3) / 2) * x
        n3 = -0.5 * yy - (math.sqrt(3) / 2) * x
        return (n1 < inr) & (n2 < inr) & (n3 < inr)
    if shape == "star":
        # Five-pointed star, a point up: fold the angle into one sector and test against the edge from
        # the outer vertex (R, 0) to the inner vertex (ri, alpha).
        rho = torch.sqrt(x**2 + y**2)
        alpha = math.pi / 5
        theta = torch.atan2(x, -y)  # 0 at "up"
        phi = torch.remainder(theta, 2 * alpha)
        phi = torch.where(phi > alpha, 2 * alpha - phi, phi)
        big, small = 1.05 * r, 0.45 * r
        px, py = rho * torch.cos(phi), rho * torch.sin(phi)
        ex, ey = small * math.cos(alpha) - big, small * math.sin(alpha)
        cross = ex * py - ey * (px - big)
        return cross > 0  # same side as the origin (whose cross product is ey * big > 0)
    if shape == "heart":
        s = 0.78 * r
        hx, hy = x / s, -(y / s) + 0.15  # heart curve with y up
        return (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 < 0
    if shape == "cross":
        w, a = 0.30 * r, 0.92 * r
        return ((x.abs() < w) & (y.abs() < a)) | ((y.abs() < w) & (x.abs() < a))
    if shape == "ring":
        d2 = x**2 + y**2
        return (d2 < (0.95 * r) ** 2) & (d2 > (0.55 * r) ** 2)
    if shape == "diamond":
        return x.abs() / (0.68 * r) + y.abs() / (1.02 * r) < 1
    raise ErasekitError(f"unknown ShapesWorld shape {shape!r}; valid: {', '.join(SHAPES)}")


def _background(style: str, x: torch.Tensor, y: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Grey level [n, H, W] of a background texture; ``level`` [n, 1, 1] jitters the brightness."""
    period = 0.25  # 8 px at 32×32
    if style == "plain":
        g = torch.full_like(x, 0.45)
    elif style == "striped":  # diagonal stripes
        g = torch.where(torch.remainder((x + y) / period, 1.0) < 0.5, 0.25, 0.58)
    elif style == "dotted":
        fx = torch.remainder(x / period, 1.0) - 0.5
        fy = torch.remainder(y / period, 1.0) - 0.5
        g = torch.where(fx**2 + fy**2 < 0.22**2, 0.22, 0.52)
    elif style == "checkered":
        cx = torch.floor(x / period)
        cy = torch.floor(y / period)
        g = torch.where(torch.remainder(cx + cy, 2) == 0, 0.25, 0.58)
    elif style == "gradient":  # dark at the top, light at the bottom
        g = 0.20 + 0.42 * y
    elif style == "grid":
        fx = torch.remainder(x / period, 1.0)
        fy = torch.remainder(y / period, 1.0)
        line = (fx < 0.16) | (fy < 0.16)
        g = torch.where(line, 0.20, 0.52)
    else:
        raise ErasekitError(f"unknown ShapesWorld style {style!r}; valid: {', '.join(STYLES)}")
    return (g + level).clamp(0, 1)


def _check_lengths(shapes, colors, styles) -> int:
    n = len(styles)
    if len(shapes) != n or len(colors) != n:
        raise ErasekitError(
            f"render needs as many shapes, colors and styles; got {len(shapes)}, {len(colors)}, {n}"
        )
    for s, c in zip(shapes, colors):
        if (s is None) != (c is None):
            raise ErasekitError("render: a shape needs a colour and a missing shape needs colour None")
    return n


def render(
    shapes: Sequence[str | None],
    colors: Sequence[str | None],
    styles: Sequence[str],
    *,
    size: int = 32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render a batch of ShapesWorld images.

    Args:
        shapes: Shape name per image, or None for a background-only image.
        colors: Colour name per image (None exactly where the shape is None).
        styles: Background style per image.
        size: Side in pixels (at least 16).
        generator: Seeds the jitter; None uses a fixed seed (0), so calls are always reproducible.

    Returns:
        Float32 tensor [N, 3, size, size] in [0, 1].

    Raises:
        ErasekitError: unknown concept names, mismatched lengths, or a size below 16.
    """
    n = _check_lengths(shapes, colors, styles)
    if size < 16:
        raise ErasekitError(f"render size must be at least 16 pixels; got {size}")
    for s in shapes:
        if s is not None:
            check_concept(s, "shape")
    for c in colors:
        if c is not None:
            check_concept(c, "color")
    for s in styles:
        check_concept(s, "style")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if n == 0:
        return torch.zeros(0, 3, size, size)

    # Draw every random number up front, in a fixed order, so results do not depend on batch grouping.
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * POS_JITTER
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * SIZE_JITTER
    cjit = (torch.rand(n, 3, generator=generator) * 2 - 1) * COLOR_JITTER
    level = (torch.rand(n, generator=generator) * 2 - 1) * 0.03

    res = size * _SUPERSAMPLE
    gx, gy = _grid(res)
    gx = gx.expand(n, res, res)
    gy = gy.expand(n, res, res)
    grey = torch.empty(n, res, res)
    for style in set(styles):
        idx = torch.tensor([i for i, s in enumerate(styles) if s == style])
        grey[idx] = _background(style, gx[idx], gy[idx], level[idx].view(-1, 1, 1))
    img = grey.unsqueeze(1).repeat(1, 3, 1, 1)

    for shape in set(s for s in shapes if s is not None):
        idx = torch.tensor([i for i, s in enumerate(shapes) if s == shape])
        x = gx[idx] - (0.5 + offset[idx, 0]).view(-1, 1, 1)
        y = gy[idx] - (0.5 + offset[idx, 1]).view(-1, 1, 1)
        r = (RADIUS * scale[idx]).view(-1, 1, 1)
        mask = _shape_mask(shape, x, y, r).unsqueeze(1)
        rgb = torch.tensor([COLOR_RGB[colors[i]] for i in idx.tolist()]) + cjit[idx]
        rgb = rgb.clamp(0, 1).view(-1, 3, 1, 1)
        img[idx] = torch.where(mask, rgb, img[idx])

    return F.avg_pool2d(img, _SUPERSAMPLE).clamp(0, 1)


def shape_mask(
    shapes: Sequence[str | None], *, size: int = 32, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Coverage [N, size, size] in [0, 1] of each image's shape, with the same jitter as :func:`render`.

    Pass a generator seeded like the one given to :func:`render` (with the same number of images) to
    get the masks of those renders. Background-only images have an all-zero mask.
    """
    n = len(shapes)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * POS_JITTER
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * SIZE_JITTER
    res = size * _SUPERSAMPLE
    gx, gy = _grid(res)
    out = torch.zeros(n, res, res)
    for shape in set(s for s in shapes if s is not None):
        idx = torch.tensor([i for i, s in enumerate(shapes) if s == shape])
        x = gx.expand(len(idx), res, res) - (0.5 + offset[idx, 0]).view(-1, 1, 1)
        y = gy.expand(len(idx), res, res) - (0.5 + offset[idx, 1]).view(-1, 1, 1)
        r = (RADIUS * scale[idx]).view(-1, 1, 1)
        out[idx] = _shape_mask(check_concept(shape, "shape"), x, y, r).float()
    return F.avg_pool2d(out.unsqueeze(1), _SUPERSAMPLE).squeeze(1)


def sample_labels(n: int, generator: torch.Generator, p_no_shape: float = 0.0) -> list[dict]:
    """Draw ``n`` label dicts ``{"shape", "color", "style"}`` uniformly over the concept grid.

    Args:
        n: Number of label sets.
        generator: Seeds the draw.
        p_no_shape: Probability of a background-only image (shape and color None).
    """
    si = torch.randint(len(SHAPES), (n,), generator=generator).tolist()
    ci = torch.randint(len(COLORS), (n,), generator=generator).tolist()
    ti = torch.randint(len(STYLES), (n,), generator=generator).tolist()
    empty = (torch.rand(n, generator=generator) < p_no_shape).tolist()
    return [
        {"shape": None, "color": None, "style": STYLES[t]}
        if e
        else {"shape": SHAPES[s], "color": COLORS[c], "style": STYLES[t]}
        for s, c, t, e in zip(si, ci, ti, empty)
    ]


def render_labels(
    labels: Sequence[dict], *, size: int = 32, generator: torch.Generator | None = None
) -> torch.Tensor:
    """:func:`render` for a list of label dicts as returned by :func:`sample_labels`."""
    return render(
        [lab["shape"] for lab in labels],
        [lab["color"] for lab in labels],
        [lab["style"] for lab in labels],
        size=size,
        generator=generator,
    )


def full_grid() -> list[dict]:
    """Every (shape, color, style) combination once, shapes outermost (384 label dicts)."""
    return [{"shape": s, "color": c, "style": t} for s in SHAPES for c in COLORS for t in STYLES]
