"""Models: inspect a checkpoint; convert it to another format, LoRAs merged in if asked."""
from __future__ import annotations

import gradio as gr

from ..app import Studio, friendly
from ..models_info import inspect_checkpoint, run_convert
from ..paths import find_models


def _table(info: dict) -> str:
    rows = [f"**format**: {info['format']}  \n**family**: {info['family']}  \n"
            f"**parameters**: {info['parameters']:,}", '',
            '| component | parameters | dtype |', '|---|---:|---|']
    rows += [f"| {k} | {v['parameters']:,} | {v['dtype']} |" for k, v in info['components'].items()]
    if info['metadata']:
        rows += ['', '**metadata**: ' + ', '.join(f'{k}={v}' for k, v in info['metadata'].items())]
    return '\n'.join(rows)


def build(studio: Studio) -> None:
    models, loras = find_models(studio.roots)
    with gr.Row():
        path = gr.Dropdown(models + loras, value=(models + loras or [None])[0], label='Checkpoint',
                           allow_custom_value=True, elem_id='model_path', scale=4)
        inspect = gr.Button('Inspect', elem_id='model_inspect', scale=1)
    info = gr.Markdown('', elem_id='model_info')
    gr.Markdown('### Convert / merge a LoRA (runs `scepter convert`)')
    with gr.Row():
        dst = gr.Textbox(label='Output (under the roots)', elem_id='model_dst')
        to = gr.Radio(['scepter', 'ldm', 'diffusers'], value='ldm', label='To', elem_id='model_to')
    merge = gr.Textbox(label='Merge LoRAs (PATH:SCALE, one a line)', lines=2, elem_id='model_merge')
    convert = gr.Button('Convert', variant='primary', elem_id='model_convert')
    out = gr.Textbox(label='Output', lines=6, elem_id='model_convert_out', interactive=False)

    @friendly
    def inspect_it(path_):
        return _table(inspect_checkpoint(studio.roots.resolve(path_ or '')))

    @friendly
    def convert_it(path_, dst_, to_, merge_):
        from scepter_core.tuners import parse_lora_spec
        specs = []
        for line in (merge_ or '').splitlines():
            if line.strip():
                file, scale = parse_lora_spec(line.strip())
                specs.append(f'{studio.roots.resolve(file)}:{scale}')
        src = studio.roots.resolve(path_ or '')
        target = studio.roots.resolve(dst_ or '', must_exist=False)
        return run_convert(src, target, to_, specs)

    inspect.click(inspect_it, path, info)
    convert.click(convert_it, [path, dst, to, merge], out, concurrency_limit=1, concurrency_id='convert')
