"""Hooks of the solver loop, one file each."""
from . import backward, buckets, checkpoint, dist_sampler, ema, log, lr, probe, tensorboard, val_loss  # noqa: F401
