"""Data: a folder's images as thumbnails, the caption beside each, editable, and the bucket
table of `scepter data inspect`."""
import gradio as gr

from ..app import Studio, friendly
from ..datasets import bucket_table, list_images, read_caption, save_caption


def build(studio: Studio) -> None:
    with gr.Row():
        folder = gr.Textbox(label='Dataset folder (under the roots)', elem_id='data_folder', scale=4)
        load = gr.Button('Open', elem_id='data_open', scale=1)
    gallery = gr.Gallery(label='Images (click one to edit its caption)', columns=8, height=320,
                         elem_id='data_gallery', allow_preview=False, format='png', fit_columns=False)
    image = gr.Textbox(label='Image', elem_id='data_image')
    caption = gr.Textbox(label='Caption (saved as NAME.txt beside the image)', lines=3, elem_id='data_caption')
    save = gr.Button('Save caption', variant='primary', elem_id='data_save')
    status = gr.Markdown('', elem_id='data_status')
    with gr.Row():
        resolution = gr.Number(512, label='Bucket budget (side, pixels)', precision=0, minimum=8,
                               elem_id='data_resolution')
        alignment = gr.Number(64, label='Alignment', precision=0, minimum=1, elem_id='data_alignment')
        inspect = gr.Button('Bucket table (scepter data inspect)', elem_id='data_inspect')
    buckets = gr.Markdown('', elem_id='data_buckets')
    shown = gr.State([])

    @friendly
    def open_folder(folder_):
        items = list_images(studio.roots, folder_ or '')
        return ([(str(p), c[:60] or '(no caption)') for p, c in items], [str(p) for p, _ in items],
                f'{len(items)} images in {folder_}')

    def pick(paths, evt: gr.SelectData):
        path = paths[evt.index] if 0 <= evt.index < len(paths) else ''
        from pathlib import Path
        return path, read_caption(Path(path)) if path else ''

    @friendly
    def save_it(image_, caption_):
        file = save_caption(studio.roots, image_ or '', caption_ or '')
        return f'saved {studio.roots.relative(file)}'

    @friendly
    def inspect_it(folder_, resolution_, alignment_):
        return bucket_table(studio.roots, folder_ or '', int(resolution_ or 512), int(alignment_ or 64))

    load.click(open_folder, folder, [gallery, shown, status])
    inspect.click(inspect_it, [folder, resolution, alignment], buckets, concurrency_limit=1,
                  concurrency_id='inspect')
    folder.submit(open_folder, folder, [gallery, shown, status])
    gallery.select(pick, shown, [image, caption])
    save.click(save_it, [image, caption], status)
