"""endebias: train neural networks that ignore a known bias (EnD, CVPR 2021)."""

from endebias.hooks import L2Normalize, capture_features
from endebias.regularizer import EnDLoss, end_loss, end_terms

__all__ = ["EnDLoss", "L2Normalize", "capture_features", "end_loss", "end_terms"]
__version__ = "0.1.0"
