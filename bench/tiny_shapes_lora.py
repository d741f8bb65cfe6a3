"""Does the LoRA variant of the tiny example learn the new shape and keep the old ones?

Samples the test prompts with the base tiny model (examples/tiny_shapes.yaml) and with the base
plus the trained adapters (examples/tiny_shapes_lora.yaml), and prints the prompt-adherence
accuracies (shape and colour read back from each image by `scepter_core.data.shapes.score_image`)
on the new shape (diamond, never in the base training) and on the old shapes. Not a test: it
needs the trained base model and takes minutes.

    python bench/tiny_shapes_lora.py [--train] [--base WEIGHTS] [--out work_dirs/tiny_shapes_lora_bench]

--train first trains the LoRA run (the base run, examples/tiny_shapes.yaml, must exist);
--base replaces the recipe's base weights; TINY_WORK_DIR moves both runs, as in the recipes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / 'examples' / 'tiny_shapes_lora.yaml'
OLD_SHAPES = ['circle', 'square', 'triangle']
COLORS = ['red', 'green', 'blue', 'yellow', 'purple', 'orange']
PROMPT_SETS = {  # name -> (SHAPES, HOLDOUT) of the ShapesDataset in test mode (HOLDOUT [] = all)
    'new shape (diamond)': (['diamond'] + OLD_SHAPES, [f'{c} diamond' for c in COLORS]),
    'old shapes': (OLD_SHAPES, []),
}


def evaluate(base: list[str], tuner: str | None, shapes: list[str], holdout: list[str],
             out: Path) -> dict[str, float]:
    """Prompt adherence of the recipe's base model, with the adapters of `tuner` if given."""
    from scepter_core.config import Config
    from scepter_core.launch import run_worker
    overrides = base + [f'SOLVER.WORK_DIR={out}', f'SOLVER.TUNER={tuner or "null"}',
                        f'SOLVER.TEST_DATA.SHAPES={json.dumps(shapes)}',
                        f'SOLVER.TEST_DATA.HOLDOUT={json.dumps(holdout)}', 'SOLVER.METRICS=[{NAME: PromptAdherence}]']
    return run_worker(Config.load(RECIPE, overrides), mode='test').state.metric_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--train', action='store_true', help='train the LoRA run first')
    parser.add_argument('--base', help="base weights in place of the recipe's MODEL.PRETRAINED_MODEL")
    parser.add_argument('--out', default='work_dirs/tiny_shapes_lora_bench', help='where test samples go')
    args = parser.parse_args()
    from scepter_core.config import Config
    from scepter_core.launch import run_worker
    base = [f'SOLVER.MODEL.PRETRAINED_MODEL={args.base}'] if args.base else []
    cfg = Config.load(RECIPE, base)
    if args.train:
        run_worker(cfg, mode='train')
    lora_run = cfg.SOLVER.WORK_DIR
    out = Path(args.out)
    rows = []
    for name, (shapes, holdout) in PROMPT_SETS.items():
        for label, tuner in (('base', None), ('base + LoRA', lora_run)):
            values = evaluate(base, tuner, shapes, holdout, out / f"{label.replace(' + ', '_')}_{name.split()[0]}")
            rows.append((name, label, values))
    print(f"{'prompts':<22}{'model':<14}{'colour':>8}{'shape':>8}{'backgr.':>8}{'all':>8}")
    for name, label, v in rows:
        print(f"{name:<22}{label:<14}{v['prompt_color_acc']:>8.2f}{v['prompt_shape_acc']:>8.2f}"
              f"{v['prompt_bg_acc']:>8.2f}{v['prompt_all_acc']:>8.2f}")


if __name__ == '__main__':
    main()
