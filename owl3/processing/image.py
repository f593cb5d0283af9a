"""Image transform and crop-grid selection of the mPLUG-Owl3 (240728) image processor.

Every view the vision tower sees is an S×S float32 tensor: RGB, PIL bicubic resize (aspect not kept),
/255, then normalize with mean = std = 0.5. With cropping ("cut") on, an image is resized to one of a
few grids of S×S cells, split row-major into cells, and followed by one global view of the whole image.

Turning what a user passes into RGB pixels is `decode.py`'s job. This module knows nothing about text or
tokens; the prompt text for a grid lives in `chat.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from owl3.errors import Owl3Error

# a PIL image, a path, bytes of an image file, or an H×W×C array / tensor (see decode.py)
ImageInput = Any

# The official "grid_squ_6" anchors as (rows, cols), in the official order: the order decides ties.
GRIDS: tuple[tuple[int, int], ...] = ((2, 2), (1, 3), (1, 4), (3, 1), (4, 1), (2, 3), (3, 2))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image (W×H) → normalized float32 tensor (3, H, W), as torchvision ToTensor + Normalize."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    raw = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)  # (H*W*3,)
    x = raw.view(rgb.height, rgb.width, 3).permute(2, 0, 1).to(torch.float32).div(255)  # (3, H, W)
    return x.sub(0.5).div(0.5)


def resize(img: Image.Image, width: int, height: int) -> Image.Image:
    """PIL bicubic resize to exactly width×height (the aspect ratio is not kept, as in the official code)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return rgb.resize((width, height), Image.BICUBIC)


def global_view(img: Image.Image, image_size: int) -> torch.Tensor:
    """The whole image as one view: (3, S, S)."""
    return to_tensor(resize(img, image_size, image_size))


def choose_grid(
    width: int, height: int, image_size: int, grids: tuple[tuple[int, int], ...] = GRIDS
) -> tuple[int, int]:
    """The (rows, cols) grid the official "docowl" anchor ranking picks for a width×height image.

    Grid g has the anchor box (0, 0, cols·S, rows·S). Score = 100·IoU(anchor, shape box) + IoU(anchor,
    image box), where the shape box (0, 0, cols·S, int(H/W·cols·S)) is the image scaled to the anchor's
    width. The official code holds boxes in int64 tensors, so the shape-box height is truncated, and does
    the float maths in float32; both are reproduced here with the same tensor ops so that near-ties break
    the same way. IoU = inter / (union + 1e-5); the first maximum wins.
    """
    if width <= 0 or height <= 0:
        raise Owl3Error(f"image has an empty size {width}x{height}; pass a non-empty image")
    rows = torch.tensor([g[0] for g in grids], dtype=torch.int64)  # (G,)
    cols = torch.tensor([g[1] for g in grids], dtype=torch.int64)  # (G,)
    anchor_w, anchor_h = cols * image_size, rows * image_size  # (G,) int64
    # float32 product (python float × int64 tensor), then truncated into int64 like the official copy_
    shape_h = (anchor_w * (height / width)).to(torch.int64)  # (G,)
    image_w = torch.full_like(anchor_w, width)
    image_h = torch.full_like(anchor_h, height)
    shape_iou = _iou_from_origin(anchor_w, anchor_h, anchor_w, shape_h)  # (G,) float32
    image_iou = _iou_from_origin(anchor_w, anchor_h, image_w, image_h)  # (G,) float32
    best = int(torch.argmax(shape_iou * 100 + image_iou))  # argmax returns the first maximum
    return grids[best]


def _iou_from_origin(w1: torch.Tensor, h1: torch.Tensor, w2: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """IoU of boxes (0, 0, w1, h1) and (0, 0, w2, h2), elementwise; int64 in, float32 out."""
    inter = torch.minimum(w1, w2).clamp(min=0) * torch.minimum(h1, h2).clamp(min=0)  # int64
    union = w1 * h1 + w2 * h2 - inter  # int64
    return inter / (union + 1e-5)  # int64 + python float → float32, as in the official box_iou


def crop_views(img: Image.Image, image_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Resize to the grid, split row-major into cells and append the global view.

    Returns (rows·cols + 1, 3, S, S): cells (0,0), (0,1), ..., (rows-1, cols-1), then the global view.
    """
    rows, cols = grid
    s = image_size
    big = to_tensor(resize(img, cols * s, rows * s))  # (3, rows·S, cols·S)
    cells = big.view(3, rows, s, cols, s).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, s, s)
    return torch.cat([cells, global_view(img, s).unsqueeze(0)], dim=0)


def image_views(img: Image.Image, image_size: int, cut: bool) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """All views of one image and its grid: ((rows·cols + 1, 3, S, S), (rows, cols)) when cut,
    ((1, 3, S, S), None) otherwise."""
    if not cut:
        return global_view(img, image_size).unsqueeze(0), None
    grid = choose_grid(img.width, img.height, image_size)
    return crop_views(img, image_size, grid), grid
