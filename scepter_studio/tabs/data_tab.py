"""Data: a folder's images as thumbnails, and the caption beside each, editable."""
import gradio as gr

from ..app import Studio, friendly
from ..datasets import list_images, read_caption, save_caption


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

    load.click(open_folder, folder, [gallery, shown, status])
    folder.submit(open_folder, folder, [gallery, shown, status])
    gallery.select(pick, shown, [image, caption])
    save.click(save_it, [image, caption], status)
