"""A tree of ImageNet-like JPEGs for timing the ImageFolder loader (`harness bench --loader`)."""

from __future__ import annotations

from pathlib import Path


def write_jpeg_tree(
    root: Path, *, images: int, classes: int, width: int, height: int, seed: int = 0
) -> list[tuple[str, int]]:
    """An ImageFolder tree `root/train/<class>/*.jpg` of `images` JPEGs of width x height.

    Their content is ImageNet-like for a decoder: smooth gradients and waves under pixel noise,
    saved at quality 92 (about 100 KB at 500x375, where ImageNet's training JPEGs average ~110 KB).
    Returns (path, class) pairs in a fixed order.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x[..., None], y[..., None]
    # one noise field, windows of it per image: drawing fresh noise per image costs more than the encoding
    noise = rng.normal(0, 26, (height + 64, width + 64, 3)).astype(np.float32)
    files = []
    for k in range(images):
        c = k % classes
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, 3) + x * rng.uniform(-0.5, 0.5, 3) + y * rng.uniform(-0.5, 0.5, 3)
        base += 40 * np.sin(x / rng.uniform(5, 40) + rng.uniform(0, 6, 3)) * np.cos(y / rng.uniform(5, 40))
        dy, dx = rng.integers(0, 64, 2)
        base += noise[dy : dy + height, dx : dx + width]
        path = folder / f"{k:05d}.jpg"
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=92)
        files.append((str(path), c))
    return files
