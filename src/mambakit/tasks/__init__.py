"""Synthetic tasks from the Mamba paper and its baselines: selective copying, induction heads, multi-query
associative recall, and state tracking (running sums over a cyclic group). Each draws seeded batches of
(inputs, targets, mask) tensors; :mod:`.metrics` scores them exactly."""

from .batch import IGNORE_INDEX, TaskBatch, make_generator
from .induction_heads import InductionHeads
from .metrics import correct_and_asked, sequence_accuracy, token_accuracy
from .mqar import MQAR, MQARMixture
from .selective_copying import SelectiveCopying
from .state_tracking import ModularSum

__all__ = [
    "IGNORE_INDEX",
    "MQAR",
    "MQARMixture",
    "ModularSum",
    "InductionHeads",
    "SelectiveCopying",
    "TaskBatch",
    "correct_and_asked",
    "make_generator",
    "sequence_accuracy",
    "token_accuracy",
]
