"""HEX (Wang et al., "Learning Robust Representations by Projecting Superficial Statistics
Out", ICLR 2019), as the authors' TensorFlow code builds it.

A neural grey-level co-occurrence matrix (NGLCM) summarises each image's superficial
statistics. The stored image (uint8, read from the trainer's ``training_rows`` by the
batch's indices) is made grey (0.299 R + 0.587 G + 0.114 B) and quantised to ``ngray``
levels as the authors do, ``x = floor(grey * (ngray - 1) / max(grey))``, and
paired with a neighbour-difference image ``x_d`` at a pixel ``offset`` (row, column):
``x_d(r, c) = x(r - row, c - col) - x(r, c)``, ``-x(r, c)`` where that pixel lies outside
the image, and ``x_d = x`` for the offset (0, 0) (the authors' default). With learned
thresholds ``lamda``, ``theta`` (one per level, initialised uniformly in [0, ngray])::

    G[i, j] = sum_pixels clamp(x_d - lamda_i, 1e-5, 1) * clamp(x - theta_j, 1e-5, 1)
    F_P     = L2-normalise over the batch( relu(Linear_{ngray^2 -> 32}(G)) )

One classifier reads the model's features ``F_A`` (what its ``fc`` reads) and ``F_P``:
``W [F_A, F_P] + b`` with ``W = [fc.weight, W_P]`` and ``b = fc.bias``. Training uses the
joint logits ``y_A = W [F_A, F_P] + b`` with the part that the NGLCM-only logits
``y_G = W [0, F_P] + b`` explain projected out, in the space of the batch's samples::

    y_L  = y_A - y_G pinv(y_G) y_A        (= y_A - y_G (y_G' y_G)^-1 y_G' y_A at full rank)
    loss = CE(y_L, y)

Evaluation uses ``W [F_A, 0] + b``, which is the model's own output: the NGLCM branch only
shapes training. Differences from the authors' code, all documented in docs/methods.md:
``F_A`` is the model's own feature (the SimpleConvNet's is L2-normalised per sample)
rather than normalised over the batch, so a test prediction does not depend on the other
images of its batch; the pseudo-inverse keeps a batch with fewer samples than classes
finite. No bias labels are read.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.methods.features import feature_size
from endebias.methods.views import grey as grey_of

NGLCM_FEATURES = 32  # the authors' width of the NGLCM's fully connected layer


def grey_levels(images: Tensor, ngray: int) -> Tensor:
    """Stored uint8 images (N, C, H, W) -> (N, H, W) integer grey levels 0 .. ngray-1 (as
    floats): ``floor(grey * (ngray - 1) / max(grey))`` per image (an all-black image: 0)."""
    images = images.float()
    grey = grey_of(images)[:, 0] if images.shape[1] == 3 else images.mean(dim=1)
    high = grey.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return torch.floor(grey * (ngray - 1) / torch.where(high > 0, high, torch.ones_like(high)))


def neighbour_difference(levels: Tensor, offset: tuple[int, int]) -> Tensor:
    """``x_d`` of the module docstring, (N, H, W)."""
    row, col = offset
    if (row, col) == (0, 0):
        return levels
    height, width = levels.shape[1:]
    shifted = torch.zeros_like(levels)
    # shifted(r, c) = levels(r - row, c - col) where that pixel exists, else 0.
    rows_to = slice(max(row, 0), height + min(row, 0))
    rows_from = slice(max(-row, 0), height - max(row, 0))
    cols_to = slice(max(col, 0), width + min(col, 0))
    cols_from = slice(max(-col, 0), width - max(col, 0))
    shifted[:, rows_to, cols_to] = levels[:, rows_from, cols_from]
    return shifted - levels


class NGLCM(nn.Module):
    """The co-occurrence branch: images -> ``F_P`` (N, 32), normalised over the batch."""

    def __init__(self, ngray: int, offset: tuple[int, int]) -> None:
        super().__init__()
        self.ngray, self.offset = ngray, offset
        self.lamda = nn.Parameter(torch.rand(ngray) * ngray)
        self.theta = nn.Parameter(torch.rand(ngray) * ngray)
        self.fc = nn.Linear(ngray * ngray, NGLCM_FEATURES)
        nn.init.trunc_normal_(self.fc.weight, std=0.1, a=-0.2, b=0.2)
        nn.init.zeros_(self.fc.bias)

    def matrix(self, images: Tensor) -> Tensor:
        """(N, ngray, ngray): the co-occurrence matrix G of each stored (uint8) image."""
        levels = grey_levels(images, self.ngray)
        x = levels.flatten(1)[:, None, :]  # (N, 1, P)
        x_d = neighbour_difference(levels, self.offset).flatten(1)[:, None, :]
        a = torch.clamp(x_d - self.lamda[None, :, None], 1e-5, 1)
        b = torch.clamp(x - self.theta[None, :, None], 1e-5, 1)
        return a @ b.transpose(1, 2)

    def forward(self, images: Tensor) -> Tensor:
        features = torch.relu(self.fc(self.matrix(images).flatten(1)))
        return nn.functional.normalize(features, dim=0)  # over the batch, as the authors


def project_out(joint: Tensor, superficial: Tensor) -> Tensor:
    """``joint - superficial pinv(superficial) joint``: the joint logits (N, K) with their
    component in the span of the superficial logits' columns removed."""
    return joint - superficial @ (torch.linalg.pinv(superficial) @ joint)


@register_method("hex")
class HEX(Method):
    uses_bias_labels = False
    defaults = {"ngray": 16, "offset": [0, 0]}
    search_space = {"ngray": {"values": [8, 16, 32]}}

    def __init__(self, model: nn.Module, *, ngray: int, offset: list[int], **common) -> None:
        super().__init__(model, **common)
        if isinstance(ngray, bool) or not isinstance(ngray, int) or ngray < 2:
            raise ValueError(f"ngray must be an integer >= 2, got {ngray!r}")
        if (not isinstance(offset, list | tuple) or len(offset) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in offset)):
            raise ValueError(f"offset must be two integers [row, column], got {offset!r}")
        if self.input_shape is not None and len(self.input_shape) != 3:
            raise ValueError(f"hex reads images (C, H, W); this dataset's inputs have shape "
                             f"{self.input_shape}")
        feature_size(model, "hex")  # the shared classifier is the model's linear fc
        self.nglcm = NGLCM(ngray, (int(offset[0]), int(offset[1])))
        self.superficial = nn.Linear(NGLCM_FEATURES, self.num_targets, bias=False)
        nn.init.trunc_normal_(self.superficial.weight, std=0.1, a=-0.2, b=0.2)

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if self.training_rows is None:
            raise ValueError("hex reads the stored images of its batch, which only the "
                             "trainer provides (Method.training_rows)")
        stored = self.training_rows.inputs[indices]
        if stored.dtype != torch.uint8 or stored.dim() != 4:
            raise ValueError(f"hex reads uint8 images (N, C, H, W); this dataset stores "
                             f"{stored.dtype} rows of shape {tuple(stored.shape[1:])}")
        own = self.model(inputs)  # W [F_A, 0] + b
        with torch.autocast(inputs.device.type, enabled=False):  # a pseudo-inverse: float32
            from_nglcm = self.superficial(self.nglcm(stored))  # W_P F_P
            joint = own.float() + from_nglcm
            superficial = from_nglcm + self.model.fc.bias.float()
            ce = nn.functional.cross_entropy(project_out(joint, superficial), targets)
        return ce, own.detach(), {"ce": ce.detach()}
