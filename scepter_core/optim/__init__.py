"""Optimizers and learning-rate schedules from registries."""
from . import lr_schedulers, optimizers  # noqa: F401
