"""SimpleConvNet, the Biased MNIST model of ReBias and EnD (docs/design.md section 3).

Four blocks of [conv -> BatchNorm -> activation] with 16/32/64/128 channels, the last
activation Tanh, then global average pooling, L2 normalisation and a linear classifier.
EnD reads the normalised pooled features (layer ``pattern_norm``).

Two variants exist in the literature. The official EnD model feeds the classifier the
normalised features (the default here). ReBias's SimpleConvNet, whose vanilla result the
EnD paper's Table 1 quotes, feeds it the raw pooled features: ``normalize_features=False``.
EnD still reads the normalised features (``pattern_norm``) in that variant.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from endebias.hooks import L2Normalize
from endebias.models import check_widths, init_conv_and_norm, register_model


class SimpleConvNet(nn.Module):
    feature_layer = "pattern_norm"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
        kernel_size: int = 7,
        pool_after: Sequence[int] = (),
        normalize_features: bool = True,
    ) -> None:
        """``pool_after`` lists the blocks followed by a 2x2 max-pool: none in the paper's
        model; the quick preset pools early to cut the cost of the later blocks 16-fold.
        ``normalize_features=False`` is ReBias's variant: the classifier reads the pooled
        features before L2 normalisation."""
        super().__init__()
        if not isinstance(normalize_features, bool):
            raise ValueError(
                f"normalize_features must be true or false, got {normalize_features!r}"
            )
        self.normalize_features = normalize_features
        check_widths("simple-conv", "channels", channels)
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd and positive to keep the image size, got "
                             f"{kernel_size}")
        layers: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(channels):
            # The paper's last block ends in Tanh rather than ReLU: bounded features.
            activation = nn.Tanh() if index == len(channels) - 1 else nn.ReLU()
            layers += [
                nn.Conv2d(previous, width, kernel_size, padding=kernel_size // 2),
                nn.BatchNorm2d(width),
                activation,
            ]
            if index in pool_after:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.pattern_norm = L2Normalize()
        self.fc = nn.Linear(previous, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (conv: Kaiming-normal, fan_out; BatchNorm: 1 and 0);
        also what a method such as LfF calls to re-initialise a copy of the model."""
        init_conv_and_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.flatten(self.pool(self.blocks(x)))
        normalised = self.pattern_norm(pooled)  # EnD's layer in both variants
        return self.fc(normalised if self.normalize_features else pooled)


@register_model("simple-conv")
def build_simple_conv(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: Sequence[int] = (16, 32, 64, 128),
    kernel_size: int = 7,
    pool_after: Sequence[int] = (),
    normalize_features: bool = True,
) -> SimpleConvNet:
    return SimpleConvNet(
        num_classes=num_classes,
        in_channels=input_shape[0],
        channels=tuple(channels),
        kernel_size=kernel_size,
        pool_after=tuple(pool_after),
        normalize_features=normalize_features,
    )
