"""EnD: cross-entropy plus the entangling/disentangling regulariser on one layer."""

from __future__ import annotations

from torch import Tensor, nn

from endebias.hooks import capture_features
from endebias.methods import Method, register_method
from endebias.regularizer import end_terms


@register_method("end")
class EnD(Method):
    packable = True
    defaults = {"alpha": 1.0, "beta": 1.0, "layer": None, "pairs": "all"}
    search_space = {
        "alpha": {"distribution": "uniform", "min": 0.0, "max": 1.0},
        "beta": {"distribution": "uniform", "min": 0.0, "max": 1.0},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        alpha: float,
        beta: float,
        layer: str | None,
        pairs: str,
        **common,
    ) -> None:
        super().__init__(model, **common)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if pairs not in ("all", "reference"):
            raise ValueError(f"pairs must be 'all' or 'reference', got {pairs!r}")
        # Default: the layer the model declares (the normalised pooled features).
        self.layer = layer or getattr(model, "feature_layer", None)
        if self.layer is None:
            raise ValueError("method 'end' needs layer=...: the model declares no feature_layer")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.pairs = pairs

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with capture_features(self.model, self.layer) as captured:
            logits = self.model(inputs)
        loss, parts = self.output_loss(logits, captured.get(), targets, biases)
        return loss, logits, parts

    def output_loss(
        self, logits: Tensor, features: Tensor, targets: Tensor, biases: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ce = nn.functional.cross_entropy(logits, targets)
        r_perp, r_par = end_terms(
            features,
            targets,
            biases,
            pairs=self.pairs,
            normalize=False,  # the models end the feature layer with L2Normalize
            num_targets=self.num_targets,
            num_biases=self.num_biases,
            reduce_group_sums=self.reduce_group_sums,
        )
        loss = ce + self.alpha * r_perp + self.beta * r_par
        return loss, {"ce": ce.detach(), "r_perp": r_perp.detach(), "r_par": r_par.detach()}
