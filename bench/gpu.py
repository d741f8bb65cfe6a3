"""The GPU path of the benchmarks: SD1.5's UNet training step and 512-px sampling in bf16,
ours vs diffusers with the same (random) weights, on one CUDA device.

    python bench/gpu.py [--parts sample train vae sdxl flux] [--batch 8 32 64] [--steps 8] [--sample-steps 50]
                        [--runs 5] [--compile] [--budget 480] [--small] [--out DIR]

train:  UNet forward + backward + fused AdamW under bf16 autocast (fp32 master weights),
        64x64 latents and 77x768 text embeddings as cached inputs (CACHE_LATENTS), each batch
        size in --batch; images/s, peak allocated memory and model FLOPs utilisation (MFU)
        counted as the issue does (0.8 TFLOP per image forward, 3x per training image) and as
        torch's FlopCounterMode counts it, over the datasheet bf16 rate and the matmul rate
        measured here. Rows: diffusers and ours, NCHW and channels_last; with --compile also
        ours under SOLVER.COMPILE (torch.compile) at the largest batch.
sample: one prompt, --sample-steps DDIM steps, CFG 7.5, 512 px, bf16: text encoding, the
        steps and the VAE decode; diffusers' StableDiffusionPipeline vs our forward_test,
        eager and with cuda_graph=True. Seconds per image (median of --runs after a warm-up).
vae:    the SD1.5 VAE at 512 px in bf16, the same weights on both sides: encode and decode at
        batch 1 and 8, tiled decode (32-latent tiles) and sliced decode (batch 8, one image at a
        time); milliseconds per call and peak allocated memory, ours vs diffusers' AutoencoderKL.
flux:   FLUX.1-dev's transformer at 1024 px (bench/gpu_flux.py): a rank-16 LoRA step under each
        memory switch (bf16 / int8 base, checkpointing, block offload) with its peak memory beside
        the memory plan's, and 28-step sampling eager / compiled. Not in the default --parts.

sdxl:   SDXL base at 1024 px: the UNet's bf16 training step (cached latents and embeddings) and
        30-step sampling eager / CUDA graph / compiled vs StableDiffusionXLPipeline
        (bench/gpu_sdxl.py). Not in the default parts: name it.

--budget (seconds) skips the later parts when time runs short; --small runs the tiny
recipe's model at 64 px (a smoke test that runs anywhere, CPU included). Results go to
--out/gpu.json (default bench/results), rewritten after every row."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from common import RESULTS, bf16_sampler, optimizer_step

ISSUE_TFLOP_PER_IMAGE = 0.8     # the issue's count for one SD1.5 UNet forward at 64x64 latents
DATASHEET_BF16_TFLOPS = 989.4   # H100 / H200 SXM dense bf16
PROMPT = 'a photograph of an astronaut riding a horse'


class Run:
    """Device, deadline and the results file."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        self.cuda = self.dev.type == 'cuda'
        self.t0 = time.perf_counter()
        self.path = Path(args.out or RESULTS) / 'gpu.json'
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {'args': vars(args), 'train': [], 'sample': [], 'vae': [], 'notes': []}

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + '\n')

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float('nan')

    def note(self, text: str) -> None:
        print(f'note: {text}', flush=True)
        self.data['notes'].append(text)
        self.save()


def environment(run: Run) -> None:
    info: dict[str, Any] = {'torch': torch.__version__}
    if run.cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        n = 8192
        a, b = (torch.randn(n, n, device=run.dev, dtype=torch.bfloat16) for _ in range(2))
        for _ in range(3):
            a @ b
        run.sync()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        run.sync()
        info['bf16_matmul_tflops'] = round(2 * n ** 3 * 10 / (time.perf_counter() - start) / 1e12, 1)
        del a, b
    run.data['env'] = info
    print(json.dumps(info), flush=True)
    run.save()


# ---- models ---------------------------------------------------------------------------------

def model_block(small: bool) -> Any:
    from scepter_core.config import Config
    from scepter_core.inference import SD15_RECIPE
    from common import TINY_RECIPE
    block = Config.load(TINY_RECIPE if small else SD15_RECIPE).SOLVER.MODEL
    if small:
        block.FIRST_STAGE_MODEL.PRETRAINED_MODEL = None
        block.SCALE_FACTOR = 0.5
    return block


def randomise_zero_layers(model: torch.nn.Module) -> None:
    """Zero-initialised output layers would make every image and gradient alike."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)


def ours_unet(block: Any, dev: torch.device) -> tuple[torch.nn.Module, dict]:
    from scepter_core.registry import BACKBONES
    torch.manual_seed(0)
    unet = BACKBONES.build(dict(block.DIFFUSION_MODEL))  # built on the CPU: the same draws everywhere
    randomise_zero_layers(unet)
    return unet.to(dev), {k: v.detach().clone() for k, v in unet.state_dict().items()}


def diffusers_unet(block: Any, state: dict, dev: torch.device) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    from scepter_core.convert import diffusers_unet_config, unet_keymap
    unet = UNet2DConditionModel.from_config(diffusers_unet_config(dict(block.DIFFUSION_MODEL)))
    unet.load_state_dict(unet_keymap(dict(block.DIFFUSION_MODEL)).to_theirs(state), strict=True)
    return unet.to(dev)


# ---- training ---------------------------------------------------------------------------------

def count_tflop(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e12


def time_steps(run: Run, step: Callable[[], Any], steps: int, warmup: int = 3) -> float:
    """Median seconds per step (CUDA events around each step on a GPU)."""
    for _ in range(warmup):
        step()
    run.sync()
    times = []
    for _ in range(steps):
        if run.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_rows(run: Run, side: str, unet: torch.nn.Module, block: Any, layout: str, compiled: bool,
               batches: list[int]) -> None:
    args, dev = run.args, run.dev
    unet.to(dev).train()
    if layout == 'channels_last':
        unet.to(memory_format=torch.channels_last)
    if compiled:
        from scepter_core.accel.switches import compile_model
        if not compile_model(unet, dev, logging.getLogger('bench')):
            run.note('torch.compile unavailable: compiled rows skipped')
            return
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=run.cuda)
    d = block.DIFFUSION_MODEL
    size = 8 if args.small else 64
    for batch in batches:
        if run.left() < (150 if compiled else 30):
            run.note(f'train {side} {layout} batch {batch}: skipped, {run.left():.0f} s of the budget left')
            continue
        g = torch.Generator(device=dev).manual_seed(batch)
        x = torch.randn(batch, d.IN_CHANNELS, size, size, device=dev, generator=g)
        noise = torch.randn(x.shape, device=dev, generator=g)
        ctx = torch.randn(batch, 77, d.CONTEXT_DIM, device=dev, generator=g)
        t = torch.randint(0, 1000, (batch,), device=dev, generator=g)
        if layout == 'channels_last':
            x = x.contiguous(memory_format=torch.channels_last)

        def forward() -> torch.Tensor:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                out = unet(x, t, encoder_hidden_states=ctx).sample if side == 'diffusers' else unet(x, t, cond=ctx)
            return torch.nn.functional.mse_loss(out.float(), noise)

        step = optimizer_step(forward, opt)
        try:
            with torch.no_grad():
                loss0 = float(forward())
            tflop = count_tflop(lambda: forward().backward()) / batch if not compiled else float('nan')
            opt.zero_grad(set_to_none=True)
            run.reset_peak()
            started = time.perf_counter()
            sec = time_steps(run, step, args.steps)
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            run.note(f'train {side} {layout} batch {batch}: out of GPU memory')
            continue
        ips = batch / sec
        ceiling = run.data.get('env', {}).get('bf16_matmul_tflops') or float('nan')
        row = {'side': side, 'layout': layout, 'compiled': compiled, 'batch': batch, 'step_s': sec,
               'images_per_s': ips, 'peak_gib': run.peak_gib(), 'loss_before': loss0,
               'counted_tflop_per_image': tflop,
               'mfu_issue_count': ips * 3 * ISSUE_TFLOP_PER_IMAGE / DATASHEET_BF16_TFLOPS,
               'mfu_counted': ips * tflop / DATASHEET_BF16_TFLOPS,
               'of_measured_matmul_rate': ips * 3 * ISSUE_TFLOP_PER_IMAGE / ceiling,
               'wall_s': time.perf_counter() - started}
        run.data['train'].append(row)
        run.save()
        print(f"train {side:9s} {layout:13s} {'compiled' if compiled else 'eager':8s} b{batch:<3d} "
              f"{sec * 1e3:8.1f} ms  {ips:7.1f} img/s  peak {row['peak_gib']:6.1f} GiB  "
              f"MFU {row['mfu_issue_count']:.1%}  loss {loss0:.5f}", flush=True)


def bench_train(run: Run) -> None:
    block = model_block(run.args.small)
    unet, state = ours_unet(block, run.dev)
    del unet
    plans = [('diffusers', 'nchw'), ('ours', 'nchw'), ('diffusers', 'channels_last'), ('ours', 'channels_last')]
    for side, layout in plans:
        model = diffusers_unet(block, state, run.dev) if side == 'diffusers' else ours_unet(block, run.dev)[0]
        train_rows(run, side, model, block, layout, False, run.args.batch)
        del model
    if run.args.compile:
        rows = [r for r in run.data['train'] if r['side'] == 'ours' and r['batch'] == max(run.args.batch)]
        layout = min(rows, key=lambda r: r['step_s'])['layout'] if rows else 'channels_last'
        train_rows(run, 'ours', ours_unet(block, run.dev)[0], block, layout, True, [max(run.args.batch)])


# ---- sampling -----------------------------------------------------------------------------------

def default_sample_plans(with_compile: bool) -> list[str]:
    """side:layout[:graph][:compile]; compiled plans come last (compiling is in place)."""
    plans = [f'{side}:{layout}{extra}' for layout in ('nchw', 'channels_last')
             for side, extra in (('diffusers', ''), ('ours', ''), ('ours', ':graph'))]
    return plans + (['ours:channels_last:graph:compile', 'diffusers:channels_last:compile'] if with_compile else [])


def bench_sample(run: Run) -> None:
    import sampling  # bench/sampling.py: the pipeline assembled from our weights

    from scepter_core.registry import MODELS
    from scepter_core.accel.switches import cast_parameters, compile_model
    args, dev = run.args, run.dev
    block = model_block(args.small)
    torch.manual_seed(0)
    ours = MODELS.build(block).eval()
    randomise_zero_layers(ours)
    ours.requires_grad_(False)
    pipe = sampling.build_pipeline(ours)
    pipe.to(dev, torch.bfloat16)
    cast_parameters(ours.to(dev), torch.bfloat16)
    size = 64 if args.small else 512
    kw = dict(sample_steps=args.sample_steps, guide_scale=7.5, guide_rescale=0.0, seed=2023, sampler='ddim',
              discretization='trailing', image_size=[size, size])

    ours_fn = bf16_sampler(ours, PROMPT, dev, kw)

    def theirs() -> torch.Tensor:
        g = torch.Generator(device=dev).manual_seed(2023)
        return pipe([PROMPT], negative_prompt=[''], num_inference_steps=args.sample_steps, guidance_scale=7.5,
                    height=size, width=size, generator=g, output_type='pt').images[0]
    images: dict[str, torch.Tensor] = {}
    compiled: set[str] = set()
    for plan in args.sample_plans or default_sample_plans(args.compile):
        side, layout, *opts = plan.split(':')
        graph, name = 'graph' in opts, plan.replace(':', ' ')
        if run.left() < (150 if 'compile' in opts and side not in compiled else 20):
            run.note(f'sample {name}: skipped, {run.left():.0f} s of the budget left')
            continue
        fmt = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
        for m in (ours.model, ours.first_stage_model) if side == 'ours' else (pipe.unet, pipe.vae):
            m.to(memory_format=fmt)
        if 'compile' in opts and side not in compiled:
            compiled.add(side)
            if side == 'ours':
                compile_model(ours, dev, logging.getLogger('bench'))  # what SOLVER.COMPILE does
            else:
                pipe.unet.compile()
        fn = theirs if side == 'diffusers' else ours_fn(graph)
        run.reset_peak()
        image = fn().float().cpu()
        images[name] = image
        times = []
        for _ in range(args.runs):
            run.sync()
            t0 = time.perf_counter()
            fn()
            run.sync()
            times.append(time.perf_counter() - t0)
        ref = next((v for k, v in images.items() if k.startswith('diffusers')), None)
        mine = next((v for k, v in images.items() if k.startswith('ours')), None)
        row = {'plan': plan, 'side': side, 'layout': layout, 'cuda_graph': graph, 'compiled': 'compile' in opts,
               'seconds_per_image': statistics.median(times),
               'best_s': min(times), 'peak_gib': run.peak_gib(),
               'mean_abs_diff_vs_diffusers': float((image - ref).abs().mean()) if ref is not None else None,
               'max_abs_diff_vs_first_ours': float((image - mine).abs().max()) if mine is not None else None}
        run.data['sample'].append(row)
        run.save()
        print(f"sample {name:36s} {row['seconds_per_image']:.3f} s/image (best {row['best_s']:.3f})  "
              f"peak {row['peak_gib']:.1f} GiB  |diff| vs diffusers {row['mean_abs_diff_vs_diffusers']}", flush=True)
    eager, graphed = images.get('ours nchw'), images.get('ours nchw graph')
    if eager is not None and graphed is not None:
        run.data['graph_vs_eager_max_abs_diff'] = float((eager - graphed).abs().max())
        print(f"cuda_graph vs eager, ours: max |diff| {run.data['graph_vs_eager_max_abs_diff']:.3g}", flush=True)
    run.save()


# ---- VAE ----------------------------------------------------------------------------------------

VAE_RUNS = (('encode', 1), ('encode', 8), ('decode', 1), ('decode', 8), ('decode-tiled', 1), ('decode-sliced', 8))


def vae_twins(run: Run) -> dict[str, tuple[Callable, Callable, Callable]]:
    """side -> (encode, decode, set_mode(run)) over the same bf16 weights."""
    from diffusers import AutoencoderKL

    from scepter_core.convert import diffusers_vae_config, vae_keymap
    from scepter_core.registry import MODELS
    torch.manual_seed(0)
    ours = MODELS.build({'NAME': 'AutoencoderKL'}).eval().to(run.dev, torch.bfloat16)
    theirs = AutoencoderKL.from_config(diffusers_vae_config()).eval()
    theirs.load_state_dict(vae_keymap().to_theirs({k: v.float().cpu() for k, v in ours.state_dict().items()}))
    theirs.to(run.dev, torch.bfloat16)

    def ours_mode(mode: str, batch: int) -> None:  # the recipe keys TILE_SIZE / BATCH_SIZE
        ours.cfg.TILE_SIZE = 32 if mode == 'decode-tiled' else None
        ours.cfg.BATCH_SIZE = 1 if mode == 'decode-sliced' else batch

    def theirs_mode(mode: str, batch: int) -> None:
        theirs.disable_tiling()
        theirs.disable_slicing()
        if mode == 'decode-tiled':
            theirs.enable_tiling()
            theirs.tile_sample_min_size, theirs.tile_latent_min_size = 256, 32
        if mode == 'decode-sliced':
            theirs.enable_slicing()
    return {'ours': (lambda x: ours.encode_posterior(x).mode(), ours.decode, ours_mode),
            'diffusers': (lambda x: theirs.encode(x).latent_dist.mode(), lambda z: theirs.decode(z).sample, theirs_mode)}


def bench_vae(run: Run) -> None:
    size = 64 if run.args.small else 512
    sides = vae_twins(run)
    for mode, batch in VAE_RUNS:
        if run.left() < 20:
            run.note(f'vae {mode} batch {batch}: skipped, {run.left():.0f} s of the budget left')
            continue
        g = torch.Generator().manual_seed(batch)
        x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(run.dev, torch.bfloat16)
        z = torch.randn(batch, 4, size // 8, size // 8, generator=g).to(run.dev, torch.bfloat16)
        outs = {}
        for side, (encode, decode, set_mode) in sides.items():
            set_mode(mode, batch)
            fn = (lambda: encode(x)) if mode == 'encode' else (lambda: decode(z))  # noqa: B023
            run.reset_peak()
            with torch.inference_mode():
                outs[side] = fn().float().cpu()
                ms = time_steps(run, fn, run.args.runs) * 1e3
            row = {'side': side, 'mode': mode, 'batch': batch, 'ms': ms, 'peak_gib': run.peak_gib()}
            run.data['vae'].append(row)
            run.save()
            print(f"vae {side:9s} {mode:13s} batch {batch}: {ms:.1f} ms  peak {row['peak_gib']:.2f} GiB", flush=True)
        diff = float((outs['ours'] - outs['diffusers']).abs().max())
        run.data['vae'][-1]['max_abs_diff_vs_ours'] = diff
        run.save()


def bench_sdxl(run: Run) -> None:
    from gpu_sdxl import bench_sdxl as sdxl
    sdxl(run, time_steps, count_tflop, DATASHEET_BF16_TFLOPS, PROMPT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, nargs='+', default=[8, 32, 64])
    ap.add_argument('--steps', type=int, default=8, help='timed training steps per row')
    ap.add_argument('--sample-steps', type=int, default=50)
    ap.add_argument('--runs', type=int, default=5, help='timed sampling runs per row')
    ap.add_argument('--compile', action='store_true', help='add torch.compile rows (training and sampling)')
    ap.add_argument('--sample-plans', nargs='+', default=None,
                    help='side:layout[:graph][:compile] rows, e.g. ours:channels_last:graph:compile')
    ap.add_argument('--budget', type=float, default=480, help='seconds; later parts are skipped past it')
    ap.add_argument('--parts', nargs='+', default=['sample', 'train', 'vae'],
                    choices=('sample', 'train', 'vae', 'sdxl', 'flux'),
                    help='sdxl: SDXL base at 1024 px (gpu_sdxl.py); flux: FLUX.1-dev LoRA (gpu_flux.py)')
    ap.add_argument('--small', action='store_true', help="the tiny recipe's model at 64 px (smoke test)")
    ap.add_argument('--out', default=None, help='folder for gpu.json (default bench/results)')
    run = Run(ap.parse_args())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    environment(run)
    for part in run.args.parts:
        try:
            from gpu_flux import bench_flux
            {'sample': bench_sample, 'train': bench_train, 'vae': bench_vae, 'sdxl': bench_sdxl,
             'flux': bench_flux}[part](run)
        except Exception as e:  # noqa: BLE001 - keep the other part's figures
            import traceback
            traceback.print_exc()
            run.note(f'{part} failed: {type(e).__name__}: {e}')
        if run.cuda:
            torch.cuda.empty_cache()
    print_tables(run.data)
    print(f'wrote {run.path} after {time.perf_counter() - run.t0:.0f} s', flush=True)


def print_tables(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    parts = {'train': ('side', 'layout', 'compiled', 'batch', 'step_s', 'images_per_s', 'peak_gib', 'mfu_issue_count'),
             'sample': ('side', 'layout', 'cuda_graph', 'compiled', 'seconds_per_image', 'peak_gib'),
             'vae': ('side', 'mode', 'batch', 'ms', 'peak_gib')}
    flux = data.get('flux') or []
    data = {**data, 'flux_lora': [r for r in flux if r['row'] == 'lora'],
            'flux_sample': [r for r in flux if r['row'] == 'sample']}
    parts.update({'flux_lora': ('side', 'base', 'checkpointing', 'offload', 'step_s', 'peak_gib', 'planned_gib'),
                  'flux_sample': ('side', 'compiled', 'steps', 'seconds_per_image', 'peak_gib')})
    for part, cols in parts.items():
        if not data.get(part):
            continue
        table = Table(title=f"{part} on {data.get('env', {}).get('gpu', 'CPU')}")
        for col in cols:
            table.add_column(col, justify='left' if col in ('side', 'layout', 'mode', 'base') else 'right')
        for row in data[part]:
            table.add_row(*[f'{row[c]:.3g}' if isinstance(row[c], float) else str(row[c]) for c in cols])
        Console(width=140).print(table)


if __name__ == '__main__':
    with contextlib.suppress(KeyboardInterrupt):
        main()
