"""Condition embedders (text encoders)."""
