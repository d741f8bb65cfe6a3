"""The one constructor shape, `Class(cfg, logger=None)`. Templates are templates.py's."""
from __future__ import annotations

import logging

from .config import Config
from .registry import prepare_config, prepared_by_build
from .templates import config_template, dict_to_yaml  # noqa: F401  (Scepter imports dict_to_yaml from here)


def get_logger(name: str = 'scepter') -> logging.Logger:
    return logging.getLogger(name)


class Configurable:
    """Mixin: stores `cfg` (defaults filled, validated) and `logger`.

    Works whether the object came from `REG.build(cfg)` or was constructed directly.
    """

    para_dict: dict = {}
    strict_keys: bool = True

    def _init_config(self, cfg: Config | dict | None, logger: logging.Logger | None) -> None:
        cfg = Config(cfg or {}) if not isinstance(cfg, Config) else cfg
        # built by REG.build: already checked and filled there; constructed directly: here
        self.cfg = cfg if prepared_by_build(type(self), cfg) else prepare_config(type(self), cfg, cfg.path,
                                                                                  logger=logger)
        self.logger = logger or get_logger()

    @classmethod
    def get_config_template(cls) -> str:
        """Commented YAML for this class, under the registry that holds it."""
        return config_template(cls)


class BaseObject(Configurable):
    """Base for plain (non-nn.Module) registered classes."""

    def __init__(self, cfg: Config | dict | None = None, logger: logging.Logger | None = None):
        self._init_config(cfg, logger)
