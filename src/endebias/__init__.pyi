# Type checkers read this stub instead of __init__.py, whose names are imported lazily.
from endebias.hooks import CapturedFeatures as CapturedFeatures
from endebias.hooks import L2Normalize as L2Normalize
from endebias.hooks import capture_features as capture_features
from endebias.regularizer import EnDLoss as EnDLoss
from endebias.regularizer import EnDTerms as EnDTerms
from endebias.regularizer import end_loss as end_loss
from endebias.regularizer import end_terms as end_terms

__all__ = [
    "CapturedFeatures",
    "EnDLoss",
    "EnDTerms",
    "L2Normalize",
    "capture_features",
    "end_loss",
    "end_terms",
]
__version__: str
