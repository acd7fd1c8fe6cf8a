"""A multi-layer perceptron for tabular data (``mlp``).

Hidden layers of [linear → ReLU], the last hidden layer ending in Tanh instead (bounded
features, as the paper's image models), then L2 normalisation (``pattern_norm``, the
layer EnD reads) and a linear classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from endebias.hooks import L2Normalize
from endebias.models import check_widths, register_model


class MLP(nn.Module):
    feature_layer = "pattern_norm"

    def __init__(
        self,
        *,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_widths("mlp", "hidden", hidden)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        previous = in_features
        for index, width in enumerate(hidden):
            layers.append(nn.Linear(previous, width))
            layers.append(nn.Tanh() if index == len(hidden) - 1 else nn.ReLU())
            if dropout and index < len(hidden) - 1:
                layers.append(nn.Dropout(dropout))
            previous = width
        self.body = nn.Sequential(*layers)
        self.pattern_norm = L2Normalize()
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pattern_norm(self.body(x.flatten(1))))


@register_model("mlp")
def build_mlp(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: Sequence[int] = (64, 32),
    dropout: float = 0.0,
) -> MLP:
    in_features = 1
    for size in input_shape:
        in_features *= size
    return MLP(
        in_features=in_features, num_classes=num_classes, hidden=tuple(hidden), dropout=dropout
    )
