"""Checkpoint I/O: safetensors first, legacy pickles only through torch's restricted
unpickler, atomic writes, and loading into a module without a second copy of the weights."""
from __future__ import annotations

import json
import logging
import os
import re
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = ('.safetensors', '.sft')
PICKLE_SUFFIXES = ('.ckpt', '.pth', '.bin', '.pt')

# Entries that original LDM / Scepter files carry beside the weights (schedule buffers, the
# EMA copy and its counters, CLIP position ids): a module that does not own them skips
# them instead of reporting them as unexpected.
KNOWN_EXTRA_KEYS = re.compile(
    r'^(betas|alphas_cumprod(_prev)?|sqrt_\w+|log_one_minus_alphas_cumprod|posterior_\w+|'
    r'logvar|lvlb_weights)$|^model_ema\.|(^|\.)position_ids$')

_SAFETENSORS_DTYPES = {
    'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
    'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8,
    'U8': torch.uint8, 'BOOL': torch.bool,
    'F8_E4M3': getattr(torch, 'float8_e4m3fn', None), 'F8_E5M2': getattr(torch, 'float8_e5m2', None),
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit: a longer header is an attack


# ---- reading ----------------------------------------------------------------------------

def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where tensor data starts."""
    try:
        with open(path, 'rb') as f:
            (n,) = struct.unpack('<Q', f.read(8))
            if n > os.path.getsize(path) - 8:
                raise ValueError(f'header length {n} exceeds the file of {os.path.getsize(path)} bytes')
            if n > MAX_HEADER_BYTES:
                raise ValueError(f'header length {n} is over the limit of {MAX_HEADER_BYTES} bytes')
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError(f'the header is a JSON {type(header).__name__}, not an object')
    except (OSError, struct.error, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"'{path}': not a readable safetensors file ({e})") from e
    return header, 8 + n


def _tensor_span(path: str, name: str, info: object, start: int, size: int) -> tuple[torch.dtype, list[int], int, int]:
    """(dtype, shape, begin, end) of one header entry, checked against the file before any view is made."""
    if not isinstance(info, dict) or not {'dtype', 'shape', 'data_offsets'} <= set(info):
        raise CheckpointError(f"'{path}': tensor '{name}' lacks dtype, shape or data_offsets in the header")
    dtype = _SAFETENSORS_DTYPES.get(info['dtype']) if isinstance(info['dtype'], str) else None
    if dtype is None:
        raise CheckpointError(f"'{path}': tensor '{name}' has unsupported dtype {info['dtype']!r}")
    shape, offsets = info['shape'], info['data_offsets']
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"'{path}': tensor '{name}' has a malformed shape {shape!r} or data_offsets {offsets!r}")
    begin, end = start + offsets[0], start + offsets[1]
    if end > size:
        raise CheckpointError(f"'{path}': truncated (tensor '{name}' ends at byte {end} of {size})")
    numel = 1
    for d in shape:
        numel *= d
    if numel * torch.empty((), dtype=dtype).element_size() != end - begin:
        raise CheckpointError(f"'{path}': tensor '{name}' of shape {tuple(shape)} {info['dtype']} does not fill "
                              f'its {end - begin} bytes (data_offsets {offsets})')
    return dtype, shape, begin, end


def _load_safetensors(path: str, device: str) -> dict[str, torch.Tensor]:
    header, start = read_safetensors_header(path)
    header.pop('__metadata__', None)
    size = os.path.getsize(path)
    if not header:
        return {}
    # One private (copy-on-write) map of the whole file; every tensor is a view into it, so
    # pages are read on first touch and nothing is copied.
    spans = {name: _tensor_span(path, name, info, start, size) for name, info in header.items()}
    blob = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    for name, (dtype, shape, begin, end) in spans.items():
        raw = blob[begin:end]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if begin % itemsize:  # a misaligned tensor cannot be viewed in place
            raw = raw.clone()
        out[name] = raw.view(dtype).reshape(shape)
    if device != 'cpu':
        out = {k: v.to(device) for k, v in out.items()}
    return out


def _load_pickle(path: str, device: str) -> dict:
    mmap = zipfile.is_zipfile(path)  # only torch's zip format can be memory-mapped
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:  # the restricted unpickler refuses anything that is not plain data
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"'{path}': refused or unreadable checkpoint (only weights are loaded, "
                              f"code in a checkpoint never runs): {first}") from e


# Our checkpoint trees: WORK_DIR/checkpoints/step-XXXXXX/model.safetensors and a `latest` pointer.
WEIGHTS = 'model.safetensors'
LATEST = 'latest'


def find_step_dir(path: str | os.PathLike) -> Path | None:
    """The step directory a work dir, checkpoints dir, step dir or `latest` pointer names
    (None when `path` is none of those). A `latest` that names a missing or half-written step
    falls back to the newest complete one, with a warning."""
    p = Path(path)
    if p.name == LATEST and p.is_file():
        p = p.parent
    for cand in (p, p / 'checkpoints'):
        if (cand / LATEST).is_file():
            return _latest_step(cand)
    return p if (p / WEIGHTS).is_file() else None


def incomplete(step: Path) -> str | None:
    """Why a step directory cannot be loaded (None when its weights are whole): checked from the
    safetensors header and the file size, nothing else is read."""
    if not step.is_dir():
        return 'does not exist'
    weights = step / WEIGHTS
    if not weights.is_file():
        return f'has no {WEIGHTS}'
    try:
        header, start = read_safetensors_header(weights)
    except CheckpointError as e:
        return f'is half-written ({e})'
    ends = [info['data_offsets'][1] for k, info in header.items()
            if k != '__metadata__' and isinstance(info, dict) and isinstance(info.get('data_offsets'), list)]
    size = weights.stat().st_size
    if start + max(ends, default=0) != size:
        return f"is half-written ('{weights}' holds {size} bytes, its header describes {start + max(ends, default=0)})"
    return None


_WARNED: set[str] = set()


def _latest_step(root: Path) -> Path:
    name = (root / LATEST).read_text(errors='replace').strip()
    # the pointer names a step folder beside it, nothing else (no '../', no absolute path)
    named = root / name if name and '/' not in name and name not in ('.', '..') else None
    why = incomplete(named) if named is not None else 'is not a step folder name'
    if why is None:
        return named
    complete = [d for d in sorted(root.glob('step-*'), reverse=True) if '.tmp-' not in d.name and incomplete(d) is None]
    if not complete:
        raise CheckpointError(f"'{root / LATEST}' names '{name}', which {why}; no complete checkpoint is left "
                              f"in '{root}'")
    message = f"'{root / LATEST}' names '{name}', which {why}; using the newest complete checkpoint '{complete[0]}'"
    if message not in _WARNED:  # once, however often a command resolves the pointer
        _WARNED.add(message)
        logging.getLogger('scepter').warning(message)
    return complete[0]


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The training step recorded in our checkpoint's metadata (None for other files)."""
    step = find_step_dir(path)
    path = step / WEIGHTS if step is not None else Path(path)
    if not path.is_file() or not str(path).endswith(SAFETENSORS_SUFFIXES):
        return None
    value = read_safetensors_header(path)[0].get('__metadata__', {}).get('step')
    return int(value) if value and value.isdigit() else None


def load_state_dict(path: str | os.PathLike, device: str = 'cpu') -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor dict from `.safetensors` (memory-mapped) or a legacy
    `.ckpt/.pth/.bin/.pt` (weights only). A top-level `state_dict` key is unwrapped. Our
    checkpoint trees work too: a work dir, a step dir or a `latest` pointer."""
    step = find_step_dir(path)
    path = str(step / WEIGHTS) if step is not None else str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: '{path}'")
    if path.endswith(SAFETENSORS_SUFFIXES):
        return _load_safetensors(path, device)
    data = _load_pickle(path, device)
    if isinstance(data, Mapping) and isinstance(data.get('state_dict'), Mapping):
        data = data['state_dict']
    if not isinstance(data, Mapping):
        raise CheckpointError(f"'{path}': expected a dict of tensors, found {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def checkpoint_keys(path: str | os.PathLike) -> list[str]:
    """Tensor names in a checkpoint (safetensors: header only, nothing is read)."""
    path = str(path)
    if path.endswith(SAFETENSORS_SUFFIXES):
        header, _ = read_safetensors_header(path)
        return [k for k in header if k != '__metadata__']
    return list(load_state_dict(path))


# ---- writing ----------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)` on a temporary name in the same directory, fsync, then rename,
    so that `path` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_dir(folder: Path) -> None:
    """Make a rename into `folder` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_state_dict(sd: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None, atomic: bool = True) -> None:
    """The one safetensors writer: `sd` to `path`, atomically unless the caller renames a whole
    directory itself (`atomic=False`). Strided tensors are made contiguous and overlapping ones
    (tied weights) copied; disjoint views of one buffer are written as-is."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous() for k, v in sd.items()}
    spans = sorted((v.data_ptr(), v.data_ptr() + v.numel() * v.element_size(), k)
                   for k, v in tensors.items() if v.numel())
    stop = -1
    for start, end, key in spans:
        if start < stop:
            tensors[key] = tensors[key].clone()
        else:
            stop = end
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if atomic:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta or None))
    else:
        save_file(tensors, str(path), metadata=meta or None)


def save_pickle_checkpoint(sd: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Legacy `.ckpt` for tools that need one: `{'state_dict': sd}` via torch.save, atomically."""
    atomic_write(path, lambda tmp: torch.save({'state_dict': dict(sd)}, tmp))


# ---- loading into a module --------------------------------------------------------------

@dataclass
class LoadReport:
    """What `load_into` did: counts plus the first few names of each kind."""

    loaded: int = 0
    missing: int = 0
    unexpected: int = 0
    ignored: int = 0
    skipped_known: int = 0
    missing_names: list[str] = field(default_factory=list)
    unexpected_names: list[str] = field(default_factory=list)

    SHOWN = 5

    def summary(self) -> str:
        text = (f'loaded {self.loaded} tensors; {self.missing} missing, {self.unexpected} unexpected, '
                f'{self.ignored} ignored, {self.skipped_known} known extras skipped')
        if self.missing_names:
            text += f'; missing e.g. {", ".join(self.missing_names)}'
        if self.unexpected_names:
            text += f'; unexpected e.g. {", ".join(self.unexpected_names)}'
        return text

    def __str__(self) -> str:
        return self.summary()


_REGEX_CHARS = re.compile(r'[\^$*+?()\[\]{}|\\]')


def matches_any(key: str, patterns: Iterable[str]) -> bool:
    """True if `key` starts with a literal pattern, or is searched out by a pattern holding
    regex syntax (`^ $ * + ? ( ) [ ] { } | \\`). A plain dot stays literal, so the prefix
    'out.' matches 'out.2.weight' and not 'output_blocks.*'."""
    for p in patterns:
        if _REGEX_CHARS.search(p):
            try:
                if re.search(p, key):
                    return True
            except re.error as e:
                raise CheckpointError(f"IGNORE_KEYS: '{p}' is not a valid regular expression ({e})") from e
        elif key.startswith(p):
            return True
    return False


def strip_prefix(sd: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries under the first prefix any key starts with, prefix removed; `sd` itself
    if no key does (so a component file and a whole-pipeline file both work)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], ignore_keys: Iterable[str] = (),
              strict: bool = False, logger: logging.Logger | None = None, source: str = 'state dict',
              assign: bool = False) -> LoadReport:
    """Load `sd` into `module`.

    Parameters on the meta device (a model built with `torch.device('meta')`), or all of
    them with `assign=True`, take the given tensors themselves: with a memory-mapped file no
    second copy of the weights exists. Use `assign=True` only before an optimizer holds the
    parameters (it replaces the Parameter objects); other parameters are copied in place.
    A shape mismatch raises naming the key and both shapes; `strict` raises on missing or
    unexpected keys. Known LDM schedule/EMA entries are skipped when the module lacks them."""
    ignore_keys = list(ignore_keys or ())
    own = module.state_dict(keep_vars=True)
    report = LoadReport()
    by_assign: dict[str, torch.Tensor] = {}
    by_copy: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in sd.items():
        if ignore_keys and matches_any(key, ignore_keys):
            report.ignored += 1
            continue
        if key not in own:
            if KNOWN_EXTRA_KEYS.search(key):
                report.skipped_known += 1
            else:
                unexpected.append(key)
            continue
        target = own[key]
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: '{key}' has shape {tuple(value.shape)} in the checkpoint "
                                  f"but {tuple(target.shape)} in {type(module).__name__}")
        if value.is_floating_point() != target.is_floating_point():  # int weights would train as garbage
            raise CheckpointError(f"{source}: '{key}' is {value.dtype} in the checkpoint but {target.dtype} in "
                                  f'{type(module).__name__}')
        if not (assign or target.is_meta):
            by_copy[key] = value
            continue
        if value.dtype != target.dtype and value.is_floating_point() and target.dtype.is_floating_point:
            value = value.to(target.dtype)
        if not target.is_meta and target.device != value.device:
            value = value.to(target.device)
        by_assign[key] = value
    missing = [k for k in own if k not in by_assign and k not in by_copy]
    report.loaded = len(by_assign) + len(by_copy)
    report.missing, report.unexpected = len(missing), len(unexpected)
    report.missing_names = missing[:LoadReport.SHOWN]
    report.unexpected_names = unexpected[:LoadReport.SHOWN]
    if strict and (missing or unexpected):
        raise CheckpointError(f'{source} does not fit {type(module).__name__}: {report.summary()}')
    if by_assign:
        module.load_state_dict(by_assign, strict=False, assign=True)
    if by_copy:
        module.load_state_dict(by_copy, strict=False)
    materialize_meta(module, logger)
    if logger:
        logger.info(f'{type(module).__name__} from {source}: {report.summary()}')
    return report


def load_component(module: nn.Module, path: str, prefixes: Iterable[str], ignore_keys: Iterable[str] = (),
                   logger: logging.Logger | None = None,
                   rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> LoadReport:
    """Load one component (UNet, VAE, ...) at construction time from its own file or from a
    whole-model file (the entries under the first of `prefixes` present). `rename` maps the
    stripped state dict to the module's names. Tensors are assigned, not copied."""
    from .fs import FS
    with FS.get_from(path) as local:
        sd = strip_prefix(load_state_dict(local), prefixes)
        sd = rename(sd) if rename else sd
        return load_into(module, sd, ignore_keys, logger=logger, source=str(path), assign=True)


def materialize_meta(module: nn.Module, logger: logging.Logger | None = None) -> list[str]:
    """Give real, freshly initialised storage to parameters still on the meta device (a model
    built on meta whose checkpoint lacked some keys); loaded neighbours in the same layer are
    kept. Returns the names of the layers that were initialised."""
    fixed = []
    for name, sub in module.named_modules():
        own = dict(sub.named_parameters(recurse=False))
        own.update(sub.named_buffers(recurse=False))
        if not any(t.is_meta for t in own.values()):
            continue
        kept = {n: t.detach() for n, t in own.items() if not t.is_meta}  # old storage survives to_empty
        device = next(iter(kept.values())).device if kept else torch.device('cpu')
        sub.to_empty(device=device, recurse=False)
        if hasattr(sub, 'reset_parameters'):
            sub.reset_parameters()
        else:
            for t in sub.parameters(recurse=False):
                nn.init.zeros_(t)
        if kept:  # reset_parameters re-drew the whole layer: put the loaded tensors back
            sub.load_state_dict(kept, strict=False, assign=True)
        fixed.append(name)
    if fixed and logger:
        logger.warning(f'{len(fixed)} layers were not (fully) in the checkpoint and were initialised afresh '
                       f'(e.g. {", ".join(fixed[:3])})')
    return fixed
