"""Optimizers and learning-rate schedules, with PyTorch's update rules.

Every update is written out on the arrays (NumPy or CuPy) in place on
``Parameter.data``; see each class's docstring for the equation it implements.
"""

from foldconv.optim import lr_scheduler
from foldconv.optim.adam import Adam, AdamW
from foldconv.optim.lr_scheduler import (
    CosineAnnealingLR,
    LRScheduler,
    MultiStepLR,
    ReduceLROnPlateau,
    StepLR,
)
from foldconv.optim.optimizer import Optimizer, flatten_state, unflatten_state
from foldconv.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "LRScheduler",
    "MultiStepLR",
    "Optimizer",
    "ReduceLROnPlateau",
    "StepLR",
    "flatten_state",
    "lr_scheduler",
    "unflatten_state",
]
