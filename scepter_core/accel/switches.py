"""Speed switches the solver applies from its config, each a no-op when off:

- SOLVER.CPU_FAST_PATHS (default on): the CPU fast paths of this package (`paths.apply`).
- SOLVER.CHANNELS_LAST: convolution weights (and so activations) in channels_last.
- SOLVER.COMPILE: `torch.compile` the denoiser in place (state-dict names unchanged); when the
  platform cannot compile, one log line and the model runs eagerly.
- SOLVER.USE_AMP: modules whose parameters are all frozen (the VAE, a frozen text encoder) are
  held in the compute dtype, so autocast stops re-casting their weights at every call.
- SOLVER.CACHE_LATENTS: latents and frozen text embeddings computed once per distinct image /
  prompt (see `models/networks/latent_cache.py`)."""
from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn


def use_channels_last(model: nn.Module) -> None:
    model.to(memory_format=torch.channels_last)


# ---- torch.compile -------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def compile_unsupported_reason(device_type: str) -> str | None:
    """Why `torch.compile` cannot run here (None when it can): tried once on a tiny function,
    since a missing compiler or an unsupported platform only shows at the first call."""
    if not hasattr(torch, 'compile'):
        return f'torch {torch.__version__} has no torch.compile'
    try:
        from torch import _dynamo
        fn = torch.compile(lambda x: torch.nn.functional.silu(x) * 2 + 1, dynamic=False)
        x = torch.linspace(-2.0, 2.0, 8, device=device_type)  # no draw from the seeded stream
        if not torch.allclose(fn(x), torch.nn.functional.silu(x) * 2 + 1, atol=1e-5):
            return 'the compiled probe gave wrong numbers'
        _dynamo.reset()
    except Exception as e:  # any failure means: run eagerly
        return f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
    return None


def compile_target(model: nn.Module) -> tuple[str, nn.Module]:
    """The module worth compiling: the denoiser of a diffusion network, else the model."""
    inner = getattr(model, 'model', None)
    return ('model', inner) if isinstance(inner, nn.Module) else ('', model)


def compile_model(model: nn.Module, device: torch.device, logger: logging.Logger) -> bool:
    """Compile the denoiser in place; False (after one log line) when this platform cannot."""
    reason = compile_unsupported_reason(torch.device(device).type)
    if reason:
        logger.warning(f'SOLVER.COMPILE: torch.compile is unavailable here ({reason}); running eagerly')
        return False
    from torch import _dynamo
    _dynamo.config.suppress_errors = True  # a graph that fails to compile later runs eagerly
    name, target = compile_target(model)
    target.compile()
    logger.info(f"SOLVER.COMPILE: compiled {name or type(model).__name__} (first steps are slow while it compiles)")
    return True


# ---- frozen modules in the compute dtype ---------------------------------------------------------

# Frozen, but averaged in full precision by a hook: never cast.
KEEP_DTYPE = ('model_ema',)


def frozen_subtrees(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The largest submodules whose parameters are all frozen (and that have some), but those
    the model runs in float32 itself (its `full_precision_parts`, e.g. SDXL's VAE)."""
    found: list[tuple[str, nn.Module]] = []
    keep = set(getattr(model, 'full_precision_parts', ()))

    def visit(prefix: str, module: nn.Module) -> None:
        if prefix.rsplit('.', 1)[-1] in KEEP_DTYPE or prefix in keep:
            return
        params = list(module.parameters())
        if params and prefix and not any(p.requires_grad for p in params):
            found.append((prefix, module))
            return
        for name, child in module.named_children():
            visit(f'{prefix}.{name}' if prefix else name, child)
    visit('', model)
    return found


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _hold_in_dtype(leaf: nn.Module, dtype: torch.dtype, outer: torch.dtype) -> None:
    """Inputs enter `leaf` in its dtype; outside autocast its outputs leave in `outer`, the dtype
    its weights had, so callers see what they would have seen without the cast."""
    def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _cast(args, dtype), _cast(kwargs, dtype)

    def post(module: nn.Module, args: tuple, output: Any) -> Any:
        if torch.is_autocast_enabled(device_type):
            return output  # autocast keeps low-precision outputs too
        return _cast(output, outer)
    device_type = next(leaf.parameters(recurse=False)).device.type
    leaf.register_forward_pre_hook(pre, with_kwargs=True)
    leaf.register_forward_hook(post)


def _keep_full_precision_state(sub: nn.Module) -> None:
    """The cast is a runtime choice: `state_dict()` (checkpoints) still gives the weights at
    their own precision, from a copy on the CPU that weights loaded later also refresh."""
    full = {k: v.detach().cpu() for k, v in sub.state_dict().items()}

    def save(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        for key in full:  # keep_vars=True asks for the live parameters: leave those
            value = state_dict.get(prefix + key)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) \
                    and value.dtype != full[key].dtype:
                state_dict[prefix + key] = full[key]

    def load(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        for key in full:
            if prefix + key in state_dict:
                full[key] = state_dict[prefix + key].detach().to('cpu', copy=True)
    sub.register_state_dict_post_hook(save)
    sub.register_load_state_dict_pre_hook(load)


def cast_frozen_modules(model: nn.Module, dtype: torch.dtype, logger: logging.Logger) -> list[str]:
    """Cast every frozen subtree of `model` to `dtype` (USE_AMP's compute dtype); returns their names.
    Each layer that holds weights converts its inputs, so the subtree works inside and outside autocast."""
    if dtype == torch.float32:
        return []
    names = []
    for name, sub in frozen_subtrees(model):
        outer = next(sub.parameters()).dtype
        _keep_full_precision_state(sub)
        sub.to(dtype)
        for leaf in sub.modules():
            if next(leaf.parameters(recurse=False), None) is not None:
                _hold_in_dtype(leaf, dtype, outer)
        names.append(name)
    if names:
        logger.info(f"USE_AMP: frozen {', '.join(names)} held in {str(dtype).removeprefix('torch.')}")
    return names


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating-point parameters to `dtype`, buffers (schedules, scale factors) left as they
    are: for sampling under autocast, where nothing trains, as diffusers' `torch_dtype` does."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model


# ---- what the solver calls ---------------------------------------------------------------------

def apply_model_switches(model: nn.Module, solver_cfg: Any, device: torch.device, logger: logging.Logger) -> None:
    """SOLVER.CHANNELS_LAST and SOLVER.COMPILE on a model already on `device` (training and inference)."""
    if solver_cfg.get('CHANNELS_LAST'):
        use_channels_last(model)
    if solver_cfg.get('COMPILE'):
        compile_model(model, device, logger)


def apply_model_fast_paths(solver: Any) -> None:
    """After the model is on its device: the CPU fast paths, channels_last and COMPILE (SOLVER keys)."""
    from ..env import we
    from .paths import apply
    mode = 'train' if 'train' in getattr(solver, '_mode_set', ()) else 'infer'
    apply(solver.unwrapped_model, mode, solver.cfg, solver.logger)
    apply_model_switches(solver.unwrapped_model, solver.cfg, we.device, solver.logger)


def apply_train_fast_paths(solver: Any) -> None:
    """After FREEZE / TRAIN_MODULES are applied: frozen modules in the AMP dtype, latent caching."""
    model = solver.unwrapped_model
    if solver.use_amp and not solver.cfg.USE_FSDP:  # FSDP owns its flat parameters' dtype
        cast_frozen_modules(model, solver.dtype, solver.logger)
    if solver.cfg.CACHE_LATENTS:
        from ..models.networks.latent_cache import enable_latent_cache
        cache = enable_latent_cache(model, solver.cfg.CACHE_MAX_MB, solver.logger, cache_dir=solver.cfg.CACHE_DIR)
        data = solver.datas.get('train')
        if cache is not None and cache.disk is not None and hasattr(data, 'attach_latent_probe'):
            vae = model.first_stage_model  # the dtype it encodes in: autocast's, else its weights'
            dtype = solver.dtype if solver.use_amp else next(vae.parameters()).dtype
            data.attach_latent_probe(cache.disk.probe(cache.named_scope(vae, dtype)))
