"""Image batches decoded and augmented on a device: the `FolderLoader`'s `decode="device"` path.

DataLoader workers only read the files (`FileBytes`, `collate_bytes`); the loader's process decodes
a whole batch at once with `torchvision.io.decode_jpeg(list, device=...)`, which is batched nvJPEG
on CUDA and libjpeg-turbo on the CPU, then crops, resizes and flips there (`train_batch`,
`eval_batch`). A file that is not a JPEG (PNG, ...: told by its first bytes, not its name) is decoded
on the CPU with `torchvision.io.decode_image` and moved to the device; so is every file of a batch
the device's decoder refuses (a CMYK JPEG, say), so such files are slow but never fatal.

The training augmentation is the PIL path's draw for draw: RandomResizedCrop's box (scale
(0.08, 1), ratio (3/4, 4/3); torchvision's algorithm, 10 attempts then the central crop) and the
flip come from a generator seeded with `sample_seed(seed, epoch, position)`, the seed the workers
path gives torch's RNG for that sample. Both paths cut the same boxes and flip the same images;
they differ only in how pixels are rounded (CUDA resizes in float32; the CPU resizes uint8 as
torchvision does). Eval: resize the short side to round(size * 256 / 224), center-crop size x size.

(torchvision 0.29 deprecates its decoders in favour of TorchCodec; `decode_jpeg` still works.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn.functional import interpolate

SCALE = (0.08, 1.0)  # RandomResizedCrop's share of the image's area
RATIO = (3 / 4, 4 / 3)  # and aspect ratio (width / height)
# as torchvision holds them: the float32 logs of RATIO, so the drawn ratios round as its do
_LOG_RATIO = tuple(float(v) for v in torch.log(torch.tensor(RATIO)))
_JPEG_MAGIC = (0xFF, 0xD8, 0xFF)
# devices where interpolate has a uint8 bilinear kernel (elsewhere: float32, rounded back)
_NATIVE_UINT8_DEVICES = ("cpu",)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of sample `position`'s augmentation in epoch `epoch` (both decode paths use it)."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + position) % 2**63


class FileBytes(torch.utils.data.Dataset):
    """The files' raw bytes: item i is (uint8 tensor (num_bytes,), i). Nothing is decoded here."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.frombuffer(bytearray(Path(self.paths[i]).read_bytes()), dtype=torch.uint8), i


def collate_bytes(
    items: list[tuple[torch.Tensor, int]],
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A batch of `FileBytes` items: ((the files' bytes end to end, their lengths (B,)), positions (B,)).

    One tensor for the whole batch, not one per file: a worker hands each tensor to the loader's
    process through shared memory of its own, and pinning is per tensor too (`split_bytes` undoes it).
    """
    lengths = torch.tensor([len(data) for data, _ in items], dtype=torch.long)
    return (torch.cat([data for data, _ in items]), lengths), torch.tensor([i for _, i in items])


def split_bytes(packed: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """`collate_bytes`'s batch back into one uint8 tensor per file (views, no copy)."""
    data, lengths = packed
    return list(data.split(lengths.tolist()))


def is_jpeg(data: torch.Tensor) -> bool:
    return tuple(data[:3].tolist()) == _JPEG_MAGIC


def decode(files: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Encoded images (CPU uint8, one tensor per file) -> RGB uint8 (3, H, W) tensors on `device`.

    The JPEGs go to the device's decoder in one call; the rest through `decode_image` on the CPU.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(files)
    jpegs = [k for k, data in enumerate(files) if is_jpeg(data)]
    if jpegs:
        try:
            images = decode_jpeg([files[k] for k in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one file the device cannot decode fails the call: these go one by one below
            images = []
        for k, image in zip(jpegs, images):
            out[k] = image
    for k, data in enumerate(files):
        if out[k] is None:
            out[k] = decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True)
    return out  # type: ignore[return-value]


def crop_box(height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w) in a height x width image, drawn from `gen` as
    torchvision's `make_params` draws it from torch's RNG: the same generator state, the same box."""
    area = height * width
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(*SCALE, generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(*_LOG_RATIO, generator=gen).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen).item())
            return top, left, h, w
    # the central crop, clipped to the ratio range
    in_ratio = width / height
    if in_ratio < min(RATIO):
        w, h = width, int(round(width / min(RATIO)))
    elif in_ratio > max(RATIO):
        w, h = int(round(height * max(RATIO))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 (3, h, w) image to (3, height, width), uint8.

    On the CPU in uint8 (torch's native kernel, what torchvision's Resize uses there); elsewhere
    interpolate has no uint8 kernel, so in float32, rounded back.
    """
    if tuple(image.shape[-2:]) == (height, width):
        return image
    x = image[None]
    if x.device.type in _NATIVE_UINT8_DEVICES:
        return interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    y = interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


def train_batch(
    images: Sequence[torch.Tensor], positions: Sequence[int], *, size: int, seed: int, epoch: int
) -> torch.Tensor:
    """Random resized crop (to size x size) and random horizontal flip of each decoded image.

    images: uint8 (3, H_k, W_k) on one device; positions: each one's sample position, which with
    (seed, epoch) fixes its draws. Returns uint8 (B, 3, size, size) on that device. One resize per
    image (their crops differ in size); the draws are a few scalar ops on the CPU, no device sync.
    """
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    gen = torch.Generator()
    for k, (image, position) in enumerate(zip(images, positions)):
        gen.manual_seed(sample_seed(seed, epoch, int(position)))
        top, left, h, w = crop_box(image.shape[-2], image.shape[-1], gen)
        x = resize(image[:, top : top + h, left : left + w], size, size)
        flip = torch.rand(1, generator=gen).item() < 0.5  # RandomHorizontalFlip(p=0.5)'s draw
        out[k] = x.flip(-1) if flip else x
    return out


def eval_batch(images: Sequence[torch.Tensor], *, size: int) -> torch.Tensor:
    """Resize each image's short side to round(size * 256 / 224) (torchvision's Resize(int) sizes),
    then take the central size x size crop. Returns uint8 (B, 3, size, size) on the images' device."""
    short = round(size * 256 / 224)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    for k, image in enumerate(images):
        h, w = image.shape[-2:]
        new_h, new_w = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
        x = resize(image, new_h, new_w)
        top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
        out[k] = x[:, top : top + size, left : left + size]
    return out
