"""Shared by the benchmarks: the tiny recipe's blocks, twin models with the same weights,
interleaved timing, peak RSS in a child process, and the table + JSON report.

Timing protocol: both sides run in the same process, on the same inputs, one step each in
turn (so background load hits both alike), after warm-up steps; we report the median wall
time and the median process CPU time per step (CPU time is what a busy shared machine
disturbs least). Ratios are `theirs / ours`: above 1 means we are faster."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

# Offline, and quiet about what does not concern a timing (set before diffusers / transformers load).
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
os.environ.setdefault('DIFFUSERS_VERBOSITY', 'error')
warnings.filterwarnings('ignore', category=FutureWarning)
warnings.filterwarnings('ignore', message='.*steps_offset.*')

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'bench' / 'results'
TINY_RECIPE = ROOT / 'examples' / 'tiny_shapes.yaml'


def set_threads(n: int) -> int:
    """Use `n` intra-op threads (0: all usable cores); returns the number in use."""
    import torch
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return torch.get_num_threads()


def tiny_model_blocks() -> Any:
    """The MODEL block of examples/tiny_shapes.yaml (defaults filled by the registry)."""
    from scepter_core.config import Config
    return Config.load(TINY_RECIPE).SOLVER.MODEL


def unet_twins(block: dict, seed: int = 0) -> tuple[Any, Any]:
    """Our DiffusionUNet from `block` and diffusers' UNet2DConditionModel with its weights."""
    import torch
    from diffusers import UNet2DConditionModel

    from scepter_core import accel
    from scepter_core.convert import diffusers_unet_config, unet_keymap
    from scepter_core.registry import BACKBONES
    torch.manual_seed(seed)
    ours = accel.apply(BACKBONES.build(dict(block)), 'train')  # as the solver does
    theirs = UNet2DConditionModel.from_config(diffusers_unet_config(dict(block)))
    theirs.load_state_dict(unet_keymap(dict(block)).to_theirs(ours.state_dict()), strict=True)
    return ours, theirs


def time_interleaved(runs: dict[str, Callable[[], Any]], steps: int, warmup: int = 2) -> dict[str, dict]:
    """Median wall / CPU seconds per call of each callable, run in turn `steps` times."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: {'wall_s': statistics.median(wall[k]), 'wall_min_s': min(wall[k]),
                'cpu_s': statistics.median(cpu[k]), 'steps': steps} for k in runs}


def optimizer_step(loss: Callable[[], Any], opt: Any) -> Callable[[], None]:
    """One training step (backward of `loss()`, step, clear) as the GPU benches time it."""
    def step() -> None:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def ratio(theirs: float, ours: float) -> float:
    return theirs / ours if ours > 0 else float('nan')


def run_child(script: str | Path, *args: str, timeout: float = 1800) -> dict:
    """Run a Python file in a fresh interpreter (cwd: the repository); it prints one JSON line last."""
    # Resolved here: the child runs in the repository root, whatever directory this one runs in.
    out = subprocess.run([sys.executable, str(Path(script).resolve()), *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout, env={**os.environ, 'PYTHONPATH': f"{ROOT}:{ROOT / 'bench'}"})
    if out.returncode:
        raise RuntimeError(f'child failed ({out.returncode}):\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def count_cpu_attention_flops() -> None:
    """Teach torch's FlopCounterMode the CPU ops it does not count: flash attention (it counts
    only the GPU kernels; 4*B*H*N*M*D forward, 2.5x that backward, as for the GPU kernels) and
    oneDNN's linear, which our fast Linear calls (2*M*K*N)."""
    import torch
    from torch.utils import flop_counter as fc
    fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd in fc.flop_registry:
        return

    @fc.register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def onednn_linear(x, weight, *args, out_shape=None, **kwargs) -> int:
        (m, k), n = x, weight[0]  # the counter passes shapes
        return 2 * m * k * n

    @fc.register_flop_formula(torch.ops.mkldnn._convolution_pointwise)
    def onednn_conv(x, weight, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(out_shape) * math.prod(weight[1:])  # weight: [O, I / groups, kh, kw]

    @fc.register_flop_formula(fwd)
    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    @fc.register_flop_formula(bwd)
    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)


# Peak resident memory of the current process, from the kernel's high-water mark (VmHWM;
# unlike ru_maxrss it is not inherited across exec). Children paste this helper.
HWM_SNIPPET = '''
def high_water_mb():
    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
def reset_high_water():  # writing 5 to clear_refs resets VmHWM to the current RSS
    try:
        open('/proc/self/clear_refs', 'w').write('5')
    except OSError:
        pass
'''


def machine() -> dict[str, Any]:
    import torch
    return {'python': platform.python_version(), 'torch': torch.__version__, 'cpu': platform.processor() or
            platform.machine(), 'cores': len(os.sched_getaffinity(0)), 'threads': torch.get_num_threads(),
            'load_avg_1m': os.getloadavg()[0]}


def results_name(bench: str, threads: int) -> str:
    """`bench`, or `bench_threadsN` when run on fewer threads than the usable cores."""
    return bench if threads >= len(os.sched_getaffinity(0)) else f'{bench}_threads{threads}'


def report(name: str, title: str, columns: list[str], rows: list[list[Any]], extra: dict | None = None) -> Path:
    """Print a Rich table and write bench/results/<name>.json (rows keyed by column)."""
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify='left' if col == columns[0] else 'right')
    for row in rows:
        table.add_row(*[f'{v:.3g}' if isinstance(v, float) else str(v) for v in row])
    console = Console(width=max(Console().width, 130))
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f'{name}.json'
    data = {'benchmark': name, 'title': title, 'machine': machine(), 'when': time.strftime('%Y-%m-%d %H:%M:%S'),
            'rows': [dict(zip(columns, row)) for row in rows], **(extra or {})}
    path.write_text(json.dumps(data, indent=2) + '\n')
    console.print(f'[dim]wrote {path.relative_to(ROOT)}[/dim]')
    return path


def tiny_args() -> Any:
    """The tiny in-process benchmarks' flags: timed steps, threads, batch, latent side."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--size', type=int, default=32)
    return ap.parse_args()


def bf16_sampler(model: Any, prompt: str, device: Any, kw: dict) -> Callable[[bool], Callable[[], Any]]:
    """`make(graph)`: one bf16-autocast forward_test of `prompt` (empty negative), with or
    without the CUDA graph, returning the image: our side of the GPU sampling rows."""
    import torch

    def make(graph: bool) -> Callable[[], Any]:
        def fn() -> Any:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                return model.forward_test([prompt], [''], cuda_graph=graph, **kw)[0]['image']
        return fn
    return make
