"""The screening network: a small MobileNetV2-style net with a lesion-map head.

Why this shape:

* **Edge-sized.** The original plan named EfficientNet-B4 (19 M parameters,
  380 px, ~4 GFLOPs at its native size). A 2-core clinic box, with no
  pretrained weights to fine-tune and 129 women to learn from, cannot afford
  it and could not train it honestly. Inverted-residual blocks (depthwise 3x3
  between 1x1 expansions) give the most receptive field per FLOP and quantize
  well to INT8 (ReLU6, BatchNorm folded at export).
* **The map is the explanation.** The last feature map (stride 8) goes through
  a 1x1 convolution to a 2-channel lesion map: channel 0 "any finding",
  channel 1 "malignant finding". A 1x1 conv over the final feature map is by
  definition a class activation map, so the heatmap the box draws is computed
  by the runtime itself, with no autograd. The image score is the map's
  maximum (multiple-instance pooling): a finding anywhere makes the breast
  suspicious, and max-pooling quantizes exactly.
* **Lesion supervision.** mini-MIAS gives lesion centres and radii; the map is
  trained against those circles, which is far more signal per image than one
  label per breast.

Input: (N, 1, S, S) float in [0, 1] from :func:`models.preprocess.preprocess`.
Outputs: ``score`` (N, 2) logits and ``lesion_map`` (N, 2, S/8, S/8) logits.

Model 0.2 uses :class:`models.lite.LiteNet` (ImageNet EfficientNet-Lite0 with
the same head and outputs); :func:`new_model` and
:func:`model_from_state_dict` pick either, so training, export, the
benchmark and the PyTorch runtime need not know which one a release holds.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ScreeningNet", "OUTPUT_NAMES", "MAP_STRIDE", "ARCHS", "new_model", "model_from_state_dict"]

OUTPUT_NAMES = ("score", "lesion_map")
MAP_STRIDE = 8


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1,
             act: bool = True) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4, dilation: int = 1):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden, dilation=dilation),
            _conv_bn(hidden, cout, 1, act=False),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class ScreeningNet(nn.Module):
    """About 0.2 M parameters; see the module docstring for the design."""

    def __init__(self, feat: int = 48, in_ch: int = 1):
        super().__init__()
        self.in_ch = in_ch
        self.stem = _conv_bn(in_ch, 16, 3, 2)  # /2
        self.stage1 = InvertedResidual(16, 16, 1, expand=1)
        self.stage2 = nn.Sequential(InvertedResidual(16, 24, 2), InvertedResidual(24, 24))  # /4
        self.stage3 = nn.Sequential(  # /8
            InvertedResidual(24, 32, 2), InvertedResidual(32, 32), InvertedResidual(32, 32)
        )
        self.stage4 = nn.Sequential(  # /16, with a dilated block for context
            InvertedResidual(32, 64, 2),
            InvertedResidual(64, 64),
            InvertedResidual(64, 64, dilation=2),
            InvertedResidual(64, 96),
        )
        self.lateral = _conv_bn(32, feat, 1, act=False)
        self.top = _conv_bn(96, feat, 1, act=False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(nn.ReLU6(inplace=False), InvertedResidual(feat, feat), nn.ReLU6())
        self.head = nn.Conv2d(feat, 2, 1)  # the CAM weights: lesion_map = head(features)
        nn.init.constant_(self.head.bias, -4.0)  # start from "nothing here"

    @classmethod
    def from_state_dict(cls, state: dict) -> ScreeningNet:
        """Rebuild the net (1- or 2-channel input) from saved weights."""
        model = cls(in_ch=int(state["stem.0.weight"].shape[1]))
        model.load_state_dict(state)
        return model.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map (N, feat, S/8, S/8) that the head reads."""
        x = self.stage1(self.stem(x))
        c3 = self.stage3(self.stage2(x))
        c4 = self.stage4(c3)
        return self.fuse(self.lateral(c3) + self.up(self.top(c4)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lesion_map = self.head(self.features(x))
        score = torch.amax(lesion_map, dim=(2, 3))
        return score, lesion_map


ARCHS = ("mobile", "lite0")


def new_model(arch: str = "mobile", in_ch: int = 1) -> nn.Module:
    """A fresh network: ``mobile`` from scratch, ``lite0`` with ImageNet weights."""
    if arch == "mobile":
        return ScreeningNet(in_ch=in_ch)
    if arch == "lite0":
        from models.lite import LiteNet

        return LiteNet.imagenet(in_ch=in_ch)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHS}")


def model_from_state_dict(state: dict) -> nn.Module:
    """Rebuild whichever network saved ``state`` (told apart by its key names), in eval mode."""
    if "stem.conv.weight" in state:
        from models.lite import LiteNet

        return LiteNet.from_state_dict(state)
    return ScreeningNet.from_state_dict(state)
