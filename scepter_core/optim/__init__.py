"""Optimizers and learning-rate schedules from registries."""
from . import lr_schedulers, optimizers  # noqa: F401
from . import low_memory  # noqa: F401,E402  (AdamW8bit, Adafactor)
