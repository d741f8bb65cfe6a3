"""Train: start `scepter train` from a recipe (an example, or one under the roots) with the
form's overrides; stop, resume; the runs with their state, log tail, loss curve, probe grids."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from ..app import Studio, friendly
from ..paths import StudioError, find_models, find_recipes

RUN_COLUMNS = ['run', 'state', 'last checkpoint', 'started', 'recipe']


def form_overrides(steps: float | None, lr: float | None, lora_rank: float | None, base_model: str | None,
                   data_folder: str | None, extra: str | None, studio: Studio) -> list[str]:
    """The form's fields as `--set` overrides (empty fields keep the recipe's values)."""
    out = []
    if steps:
        out.append(f'SOLVER.MAX_STEPS={int(steps)}')
    if lr:
        out.append(f'SOLVER.OPTIMIZER.LEARNING_RATE={float(lr)}')
    if base_model:
        out.append(f'SOLVER.MODEL.PRETRAINED_MODEL={studio.roots.resolve(base_model)}')
    if lora_rank:
        r = int(lora_rank)
        out.append(f'SOLVER.TUNER=[{{NAME: LoRA, R: {r}, LORA_ALPHA: {r}}}]')
    if data_folder:
        out.append(f'SOLVER.TRAIN_DATA.DATA_FOLDER={studio.roots.resolve(data_folder)}')
    for line in (extra or '').splitlines():
        if line.strip():
            if '=' not in line:
                raise StudioError(f"extra override '{line.strip()}': expected KEY.PATH=VALUE")
            out.append(line.strip())
    return out


def _last_checkpoint(work_dir: Path) -> str:
    latest = work_dir / 'checkpoints' / 'latest'
    return latest.read_text().strip() if latest.is_file() else '-'


def runs_table(studio: Studio) -> list[list[str]]:
    return [[r.name, r.state, _last_checkpoint(r.dir), time.strftime('%H:%M:%S', time.localtime(r.started)),
             Path(r.recipe).name] for r in studio.runs.list()]


def build(studio: Studio, demo: Any, refresh_s: float) -> None:
    recipes = find_recipes(studio.roots, studio.examples)
    models, _ = find_models(studio.roots)
    with gr.Row():
        recipe = gr.Dropdown(recipes, value=recipes[0] if recipes else None, label='Recipe', allow_custom_value=True,
                             elem_id='train_recipe', scale=3)
        name = gr.Textbox(label='Run name', value=f'run-{time.strftime("%m%d-%H%M%S")}', elem_id='train_name', scale=1)
    with gr.Row():
        steps = gr.Number(0, label='Steps (0: the recipe\'s)', precision=0, minimum=0, elem_id='train_steps')
        lr = gr.Number(0, label='Learning rate (0: the recipe\'s)', minimum=0, elem_id='train_lr')
        lora_rank = gr.Number(0, label='LoRA rank (0: full fine-tuning or the recipe\'s tuner)', precision=0,
                              minimum=0, elem_id='train_lora_rank')
    with gr.Row():
        base = gr.Dropdown(['', *models], value='', label='Base model (empty: the recipe\'s)', allow_custom_value=True,
                           elem_id='train_base')
        data = gr.Textbox(label='Data folder (a folder dataset\'s DATA_FOLDER)', elem_id='train_data')
    extra = gr.Textbox(label='More overrides (KEY.PATH=VALUE, one a line, as --set)', lines=2, elem_id='train_extra')
    with gr.Row():
        start = gr.Button('Start', variant='primary', elem_id='train_start')
        stop = gr.Button('Stop', variant='stop', elem_id='train_stop')
        resume = gr.Button('Resume', elem_id='train_resume')
    status = gr.Markdown('', elem_id='train_status')
    table = gr.Dataframe(headers=RUN_COLUMNS, value=runs_table(studio) or None, interactive=False, label='Runs',
                         elem_id='train_runs')
    names = [r.name for r in studio.runs.list()]
    selected = gr.Dropdown(names, value=names[0] if names else None, label='Show run', allow_custom_value=True,
                           elem_id='train_run')
    with gr.Row():
        loss = gr.Image(label='Loss (TensorBoard events)', type='filepath', elem_id='train_loss', height=320,
                        format='png')
        probes = gr.Gallery(label='Probe grids', columns=2, height=320, elem_id='train_probes', format='png',
                            fit_columns=False)
    log = gr.Textbox(label='Log', lines=14, max_lines=14, autoscroll=True, elem_id='train_log', interactive=False)

    @friendly
    def start_run(recipe_, name_, steps_, lr_, rank_, base_, data_, extra_):
        overrides = form_overrides(steps_, lr_, rank_, base_, data_, extra_, studio)
        run = studio.runs.start((name_ or '').strip(), studio.recipe(recipe_ or ''), overrides)
        return f'started **{run.name}** (pid {run.pid})', gr.update(choices=[r.name for r in studio.runs.list()],
                                                                     value=run.name)

    @friendly
    def stop_run(run_):
        run = studio.runs.stop(run_ or '')
        return f'stopped **{run.name}** (last checkpoint: {_last_checkpoint(run.dir)})', gr.update()

    @friendly
    def resume_run(run_):
        run = studio.runs.get(run_ or '')
        run = studio.runs.start(run.name, Path(run.recipe), resume=True)
        return f'resumed **{run.name}** (pid {run.pid})', gr.update()

    def refresh(run_):
        rows = runs_table(studio)
        if not run_:
            return rows, None, [], ''
        try:
            curve = studio.runs.loss_curve(run_)
            grids = [(str(p), p.parent.name) for p in studio.runs.probe_grids(run_)][::-1]
            return rows, str(curve) if curve else None, grids, studio.runs.log_tail(run_)
        except StudioError as e:
            return rows, None, [], str(e)

    form = [recipe, name, steps, lr, lora_rank, base, data, extra]
    start.click(start_run, form, [status, selected])
    stop.click(stop_run, selected, [status, selected], concurrency_limit=None)
    resume.click(resume_run, selected, [status, selected])
    timer = gr.Timer(refresh_s)
    timer.tick(refresh, selected, [table, loss, probes, log], concurrency_limit=None, show_progress='hidden')
    selected.change(refresh, selected, [table, loss, probes, log], show_progress='hidden')
