"""ResNet-18 (``resnet18``), written here with torchvision's parameter names, so that a
torchvision state dict (e.g. the user's ImageNet weights) loads into it unchanged.

As in the EnD paper's CelebA experiments, the network's last ReLU (the one after the
final residual addition of ``layer4``) is a Tanh, and the pooled 512-d features are
flattened and L2-normalised (``pattern_norm``, the layer EnD reads) before ``fc``. The
ReLU inside that last block, after its first convolution, stays a ReLU. Activations and
the normalisation hold no parameters, so the state-dict keys are torchvision's exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from endebias.hooks import L2Normalize
from endebias.models import init_conv_and_norm, register_model

logger = logging.getLogger(__name__)

WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; ``downsample`` when the shape changes."""

    def __init__(self, in_channels: int, width: int, stride: int, last: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        # Bounded features at the network's end; a ReLU everywhere else.
        self.out_activation: nn.Module = nn.Tanh() if last else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.out_activation(out + shortcut)


class ResNet18(nn.Module):
    feature_layer = "pattern_norm"

    def __init__(self, *, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        previous = 64
        for stage, width in enumerate(WIDTHS, start=1):
            stride = 1 if stage == 1 else 2
            last = stage == len(WIDTHS)
            blocks = nn.Sequential(
                BasicBlock(previous, width, stride),
                BasicBlock(width, width, 1, last=last),
            )
            self.add_module(f"layer{stage}", blocks)
            previous = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.pattern_norm = L2Normalize()
        self.fc = nn.Linear(previous, num_classes)
        init_conv_and_norm(self)  # torchvision's initialisation

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pattern_norm(self.flatten(self.avgpool(x))))


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision-style state dict from ``path`` (``weights_only=True``: no code
    runs). A classifier of another size (ImageNet's 1000 classes) is left freshly
    initialised; any other missing, unexpected or mis-shaped entry is an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors have many types
        raise ValueError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    own = model.state_dict()
    if any(state.get(k) is not None and state[k].shape != own[k].shape for k in ("fc.weight",)):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        logger.info("%s: classifier of another size; fc keeps its fresh initialisation", path)
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model needs "
                f"{tuple(own[key].shape)}"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a ResNet-18 state dict: {len(missing)} missing keys "
            f"({', '.join(missing[:3])}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])})"
        )


@register_model("resnet18")
def build_resnet18(
    *, num_classes: int, input_shape: tuple[int, ...], pretrained_path: str | None = None
) -> ResNet18:
    model = ResNet18(num_classes=num_classes, in_channels=input_shape[0])
    if pretrained_path:
        load_pretrained(model, pretrained_path)
    return model
