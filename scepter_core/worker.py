"""One worker's job: build cfg.SOLVER in this process and run it. Every launcher (spawn,
torchrun, Lightning) calls into here once its process group exists."""
from __future__ import annotations

from typing import Any

from .config import Config
from .env import we
from .fs import FS
from .logs import setup_logging
from .params import honours_recipe_strict
from .registry import SOLVERS, prepare_config


@honours_recipe_strict  # the recipe's top-level STRICT applies to every build below
def build_solver(cfg: Config, mode: str = 'train', wrap_model: bool = True) -> Any:
    """Build cfg.SOLVER in this process and set it up (data, model, optimizer, hooks, resume).
    `wrap_model=False` leaves DDP to someone else (the Lightning runner)."""
    env = cfg.get('ENV') or Config()
    if env.get('DEVICE'):
        we.set_device(env.DEVICE)
    prepare_config(SOLVERS.get(cfg.SOLVER.NAME), cfg.SOLVER, 'SOLVER')  # defaults: WORK_DIR, LOG_FILE, SEED
    logger = setup_logging(cfg.SOLVER.WORK_DIR, cfg.SOLVER.LOG_FILE, we.rank)
    we.seed_all(cfg.SOLVER.SEED)
    if cfg.SOLVER.get('FILE_SYSTEM'):
        FS.init_fs_client(cfg.SOLVER.FILE_SYSTEM)
    solver = SOLVERS.build(cfg.SOLVER, logger=logger, mode=mode)
    solver.cfg_root = cfg
    solver.wrap_model = wrap_model
    solver.set_up()
    return solver


@honours_recipe_strict
def run_worker(cfg: Config, mode: str = 'train') -> Any:
    """Build the solver from cfg.SOLVER and run it in this process."""
    solver = build_solver(cfg, mode)
    solver.solve()
    return solver
