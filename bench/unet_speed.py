"""SD1.5-size UNet: forward and forward+backward time, peak RSS and achieved GFLOP/s, ours vs
diffusers' UNet2DConditionModel, against this machine's measured fp32 matmul rate.

    python bench/unet_speed.py [--size 64] [--batch 1] [--steps 3] [--rounds 1] [--threads N]
                               [--modes fwd fwdbwd] [--tiny] [--channels-last] [--bf16] [--packed]

Every measurement runs in a fresh process (one side, one mode), so peak RSS (VmHWM) is that
work's alone; the processes alternate ours / diffusers, `--rounds` times. Each builds its
model with random weights (same config through our converter; speed does not depend on the
values), counts the FLOPs of one step with torch's FlopCounterMode during warm-up, then
times `--steps` steps. `fwd` is an inference-mode forward; `fwdbwd` a training-mode forward
and backward of the mean output. The matmul rate (the practical ceiling) is measured in
its own process with the same thread count. `--packed` runs our forward as sampling does,
inside `packed_weights()` (conv weights up to SCEPTER_CPU_PACK_LIMIT_MB packed once; set the
variable to compare limits). Writes bench/results/unet_speed.json."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

from common import HWM_SNIPPET, count_cpu_attention_flops, ratio, report, results_name, run_child

TINY = dict(MODEL_CHANNELS=64, CHANNEL_MULT=[1, 2, 2], ATTENTION_RESOLUTIONS=[2, 1], CONTEXT_DIM=64)
exec(HWM_SNIPPET)  # high_water_mb(), reset_high_water()


def matmul_rate(n: int = 2048, repeats: int = 6) -> dict:
    """Best and median fp32 GFLOP/s of an n x n matmul, through torch's default BLAS (`a @ b`,
    MKL in the PyPI wheels) and through oneDNN (the kernels of our fast Linear); the faster
    is the practical ceiling."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels = {'blas': lambda: a @ b}
    try:
        torch.ops.mkldnn._linear_pointwise(a, b, None, 'none', [], '')
        kernels['onednn'] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, 'none', [], '')
    except (RuntimeError, AttributeError):
        pass
    flops, out = 2 * n ** 3, {}
    for name, fn in kernels.items():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = {'gflops_best': flops / min(times) / 1e9, 'gflops_median': flops / statistics.median(times) / 1e9}
    return {'gflops_best': max(v['gflops_best'] for v in out.values()), **out}


def child(side: str, mode: str, args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    torch.set_num_threads(args.threads)
    count_cpu_attention_flops()
    cfg = {'NAME': 'DiffusionUNet', **(TINY if args.tiny else {})}
    base_mb = high_water_mb()
    torch.manual_seed(0)
    if side == 'ours':
        from scepter_core import accel
        from scepter_core.registry import BACKBONES
        model = accel.apply(BACKBONES.build(cfg), 'train' if mode == 'fwdbwd' else 'infer')
    else:
        from diffusers import UNet2DConditionModel

        from scepter_core.convert import diffusers_unet_config
        model = UNet2DConditionModel.from_config(diffusers_unet_config(cfg))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ctx_dim = model.cfg.CONTEXT_DIM if side == 'ours' else model.config.cross_attention_dim
    x = torch.randn(args.batch, 4, args.size, args.size)
    t, ctx = torch.full((args.batch,), 500.0), torch.randn(args.batch, 77, ctx_dim)
    built_mb = high_water_mb()

    def step() -> None:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=args.bf16):
            out = model(x, t, ctx)
            out = out if side == 'ours' else out.sample
        if mode == 'fwdbwd':
            out.float().mean().backward()
            model.zero_grad(set_to_none=True)

    model.train(mode == 'fwdbwd').requires_grad_(mode == 'fwdbwd')
    grad = torch.enable_grad() if mode == 'fwdbwd' else torch.inference_mode()
    from scepter_core.accel import packed_weights
    scope = packed_weights() if args.packed and side == 'ours' and mode == 'fwd' else contextlib.nullcontext()
    with grad, scope:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        times, cpu = [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return {'side': side, 'mode': mode, 'wall_s': statistics.median(times), 'wall_min_s': min(times),
            'cpu_s': statistics.median(cpu), 'gflop': counter.get_total_flops() / 1e9,
            'peak_rss_mb': high_water_mb(), 'rss_after_build_mb': built_mb, 'rss_base_mb': base_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=int, default=64, help='latent size (64 = 512 px images)')
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--rounds', type=int, default=1, help='alternating ours/diffusers processes per mode')
    ap.add_argument('--threads', type=int, default=0, help='0: all usable cores')
    ap.add_argument('--modes', nargs='+', default=['fwd', 'fwdbwd'], choices=['fwd', 'fwdbwd'])
    ap.add_argument('--tiny', action='store_true', help='a small config instead of SD1.5')
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--bf16', action='store_true', help='bf16 autocast')
    ap.add_argument('--packed', action='store_true', help='our forward inside packed_weights(), as in sampling')
    ap.add_argument('--child', nargs=2, metavar=('SIDE', 'MODE'), help=argparse.SUPPRESS)
    ap.add_argument('--rate', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.threads:
        args.threads = len(os.sched_getaffinity(0))
    if args.rate or args.child:
        import torch
        torch.set_num_threads(args.threads)
        print(json.dumps(matmul_rate() if args.rate else child(*args.child, args)))
        return
    passthrough = sys.argv[1:] + ['--threads', str(args.threads)]
    script = __file__
    rate = run_child(script, *passthrough, '--rate')
    rows, raw = [], []
    for mode in args.modes:
        got: dict[str, list[dict]] = {'ours': [], 'diffusers': []}
        for _ in range(args.rounds):
            for side in got:
                got[side].append(run_child(script, *passthrough, '--child', side, mode))
        raw += got['ours'] + got['diffusers']
        o, d = ({k: statistics.median(r[k] for r in got[s]) for k in got[s][0] if k not in ('side', 'mode')}
                for s in ('ours', 'diffusers'))
        for name, r in (('ours', o), ('diffusers', d)):
            gfs = r['gflop'] / r['wall_s']
            rows.append([f'{mode} {name}', r['wall_s'], r['cpu_s'], r['gflop'], gfs, gfs / rate['blas']['gflops_best'],
                         gfs / rate.get('onednn', rate['blas'])['gflops_best'], r['peak_rss_mb'] / 1024])
        rows.append([f'{mode} diffusers/ours', ratio(d['wall_s'], o['wall_s']), ratio(d['cpu_s'], o['cpu_s']), '',
                     '', '', '', ratio(d['peak_rss_mb'], o['peak_rss_mb'])])
    what = 'tiny' if args.tiny else 'SD1.5'
    title = (f"{what} UNet, {args.size}x{args.size} latents, batch {args.batch}, {'bf16' if args.bf16 else 'fp32'}, "
             f"{args.threads} threads; fp32 matmul {rate['gflops_best']:.0f} GFLOP/s "
             f"(BLAS {rate['blas']['gflops_best']:.0f}, oneDNN {rate.get('onednn', {}).get('gflops_best', 0):.0f})")
    limit = os.environ.get('SCEPTER_CPU_PACK_LIMIT_MB', 'default')
    name = results_name('unet_speed', args.threads) + (f'_packed_{limit}mb' if args.packed else '')
    report(name, title, ['run', 'wall s', 'CPU s', 'GFLOP', 'GFLOP/s', 'of BLAS rate', 'of oneDNN rate', 'peak RSS GB'],
           rows, {'matmul_rate': rate, 'raw': raw, 'args': {k: v for k, v in vars(args).items() if k != 'child'}})


if __name__ == '__main__':
    main()
