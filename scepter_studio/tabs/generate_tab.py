"""Generate: model and LoRAs found under the roots, the sampling settings of `scepter infer`
(txt2img, or img2img from an uploaded image and a strength), a gallery, and the history of
earlier images (kept on disk, so it survives restarts)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from ..app import Studio, friendly
from ..generate import Request
from ..paths import find_models

RECIPE = '(recipe)'  # use the recipe's SAMPLE_ARGS value


def _samplers() -> list[str]:
    import scepter_core.diffusion  # noqa: F401  (registers the samplers)
    from scepter_core.registry import DIFFUSION_SAMPLERS
    return [RECIPE, *DIFFUSION_SAMPLERS.names()]


def _history(studio: Studio, limit: int = 60) -> list[tuple[str, str]]:
    entries = studio.generator.history()[-limit:][::-1]
    return [(str(studio.generator.out_dir / e['file']), e['parameters'].splitlines()[0][:80]) for e in entries]


def build(studio: Studio, demo: Any) -> None:
    models, loras = find_models(studio.roots)
    with gr.Row():
        model = gr.Dropdown(models, value=models[0] if models else None, label='Model', allow_custom_value=True,
                            elem_id='gen_model', scale=4,
                            info='Work dirs, single files and diffusers folders found under the roots')
        rescan = gr.Button('Rescan', elem_id='gen_rescan', scale=1)
    with gr.Row():
        lora_pick = gr.Dropdown(loras, label='Add a LoRA', elem_id='gen_lora_pick', scale=2)
        lora_specs = gr.Textbox(label='LoRAs (PATH:SCALE, one a line)', lines=2, elem_id='gen_loras', scale=3)
    prompt = gr.Textbox(label='Prompt', lines=2, elem_id='gen_prompt')
    n_prompt = gr.Textbox(label='Negative prompt', elem_id='gen_n_prompt')
    with gr.Row():
        sampler = gr.Dropdown(_samplers(), value=RECIPE, label='Sampler', elem_id='gen_sampler')
        steps = gr.Number(0, label='Steps (0: the recipe\'s)', precision=0, minimum=0, maximum=1000,
                          elem_id='gen_steps')
        guidance = gr.Number(0, label='Guidance (0: the recipe\'s)', minimum=0, elem_id='gen_guidance')
        rescale = gr.Number(-1, label='Guidance rescale (-1: the recipe\'s)', minimum=-1, maximum=1,
                            elem_id='gen_rescale')
    with gr.Row():
        seed = gr.Number(-1, label='Seed (-1: random)', precision=0, elem_id='gen_seed')
        height = gr.Number(0, label='Height (0: the recipe\'s)', precision=0, minimum=0, step=8, elem_id='gen_height')
        width = gr.Number(0, label='Width', precision=0, minimum=0, step=8, elem_id='gen_width')
        batch = gr.Slider(1, 16, value=1, step=1, label='Batch', elem_id='gen_batch')
    with gr.Row():
        init_image = gr.Image(type='filepath', sources=['upload'], label='Init image (img2img; none: txt2img)',
                              elem_id='gen_init', height=180, scale=2)
        strength = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label='Strength (img2img: how far the image is noised)',
                             elem_id='gen_strength', scale=3)
    run = gr.Button('Generate', variant='primary', elem_id='gen_run')
    gallery = gr.Gallery(label='Images', columns=6, height=280, elem_id='gen_gallery', format='png', preview=False,
                         object_fit='contain', fit_columns=False)
    params = gr.Textbox(label='Parameters (saved in each PNG)', lines=3, elem_id='gen_params', interactive=False)
    history = gr.Gallery(label='History', columns=8, height=240, elem_id='gen_history', format='png',
                         fit_columns=False)

    @friendly
    def generate(model_, loras_, prompt_, n_prompt_, sampler_, steps_, guidance_, rescale_, seed_, height_, width_,
                 batch_, init_, strength_, progress=gr.Progress()):
        req = Request(model=model_ or '', prompt=prompt_ or '', n_prompt=n_prompt_ or '',
                      loras=[line.strip() for line in (loras_ or '').splitlines() if line.strip()],
                      sampler=None if sampler_ in (None, RECIPE) else sampler_, steps=int(steps_ or 0) or None,
                      guide_scale=guidance_ or None,
                      guide_rescale=None if rescale_ is None or rescale_ < 0 else rescale_,
                      seed=int(-1 if seed_ is None else seed_),
                      height=int(height_ or 0) or None, width=int(width_ or 0) or None, batch=int(batch_),
                      init_image=studio.generator.store_upload(init_) if init_ else None,
                      strength=float(strength_) if init_ else None)
        progress(0, desc='loading the model')
        paths = studio.generator.generate(req, lambda done, total: progress((done, total), desc='sampling',
                                                                          unit='steps'))
        from scepter_core.utils.images import read_parameters
        return [str(p) for p in paths], read_parameters(paths[-1]), _history(studio)

    run.click(generate, [model, lora_specs, prompt, n_prompt, sampler, steps, guidance, rescale, seed, height, width,
                         batch, init_image, strength], [gallery, params, history], concurrency_limit=1,
              concurrency_id='generate')

    def add_lora(pick, specs):
        return '\n'.join([*(specs or '').splitlines(), f'{pick}:1.0']).strip() if pick else specs

    lora_pick.change(add_lora, [lora_pick, lora_specs], lora_specs)

    def rescan_models():
        found, found_loras = find_models(studio.roots)
        return gr.update(choices=found), gr.update(choices=found_loras)

    rescan.click(rescan_models, None, [model, lora_pick])
    demo.load(lambda: _history(studio), None, history)
