"""A bias-capturing network: ReBias's "biased" SimpleConvNet (``bias-conv``).

The layout of SimpleConvNet (four blocks of [conv -> BatchNorm -> ReLU], 16/32/64/128
channels, global average pooling, a linear classifier), but every convolution has a 1x1
kernel. Each position of the last feature map then depends on one input pixel only (a
receptive field of one pixel), and global average pooling sums those per-pixel values, so
the network sees the *distribution of colours* in an image and nothing of where they are:
it can learn a colour bias but not a digit's shape. Bahng et al. (ICML 2020) use it as g,
the network biased by design, on Biased MNIST (their code's ``g_kernel_size=1``: all four
convolutions, the first one included, are 1x1; every activation is ReLU, no Tanh and no
L2 normalisation, unlike EnD's SimpleConvNet).

Methods read its pooled features (layer ``pooled``, ReBias's ``feature_pos='post'``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from endebias.models import check_widths, init_conv_and_norm, register_model


class BiasCapturingConvNet(nn.Module):
    feature_layer = "pooled"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
    ) -> None:
        super().__init__()
        check_widths("bias-conv", "channels", channels)
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 1), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pooled = nn.Flatten()
        self.fc = nn.Linear(previous, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SimpleConvNet's initialisation (ReBias initialises both of its networks so)."""
        init_conv_and_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pooled(self.pool(self.blocks(x))))


@register_model("bias-conv")
def build_bias_conv(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    channels: Sequence[int] = (16, 32, 64, 128),
) -> BiasCapturingConvNet:
    if len(input_shape) != 3:
        raise ValueError(
            f"model 'bias-conv' takes images (channels, height, width), not inputs of shape "
            f"{tuple(input_shape)}"
        )
    return BiasCapturingConvNet(
        num_classes=num_classes, in_channels=input_shape[0], channels=tuple(channels)
    )
