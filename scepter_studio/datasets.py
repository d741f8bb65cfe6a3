"""The Data tab's folder view: images with the caption file beside each (`NAME.txt`)."""
from __future__ import annotations

import os
from pathlib import Path

from .paths import IMAGE_SUFFIXES, Roots, StudioError

MAX_CAPTION = 10_000  # characters


def list_images(roots: Roots, folder: str, limit: int = 500) -> list[tuple[Path, str]]:
    """(image, caption) for the images in `folder` (not recursive), by name."""
    path = roots.resolve(folder)
    if not path.is_dir():
        raise StudioError(f"'{folder}' is not a folder")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not p.is_symlink())
    return [(p, read_caption(p)) for p in images[:limit]]


def caption_file(image: Path) -> Path:
    return image.with_suffix('.txt')


def read_caption(image: Path) -> str:
    file = caption_file(image)
    return file.read_text(errors='replace').strip() if file.is_file() else ''


def save_caption(roots: Roots, image: str, caption: str) -> Path:
    """Write `caption` beside `image` (atomically); returns the caption file."""
    path = roots.resolve(image)
    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        raise StudioError(f"'{image}' is not an image file")
    if len(caption) > MAX_CAPTION:
        raise StudioError(f'caption: {len(caption)} characters, at most {MAX_CAPTION}')
    file = caption_file(path)
    roots.resolve(file, must_exist=False)  # a symlinked caption file must not lead outside
    tmp = file.with_name(file.name + '.tmp')
    tmp.write_text(caption.strip() + '\n')
    os.replace(tmp, file)
    return file


def bucket_table(roots: Roots, folder: str, resolution: int = 512, alignment: int = 64) -> str:
    """`scepter data inspect FOLDER --resolution R --alignment A` as Markdown: the counts and the
    bucket table (the CLI's own rows)."""
    from scepter_core.data.inspect import inspect_source
    from scepter_core.errors import ScepterError
    path = roots.resolve(folder)
    try:
        report = inspect_source(str(path), resolution=int(resolution), alignment=int(alignment))
    except ScepterError as e:
        raise StudioError(str(e).splitlines()[0]) from e
    lines = [f'**{report.images}** readable images, **{len(report.bad)}** bad, **{len(report.no_caption)}** '
             f'without a caption; buckets at {resolution}x{resolution} pixels, alignment {alignment}', '',
             '| ' + ' | '.join(report.BUCKET_COLUMNS) + ' |', '|' + '---:|' * len(report.BUCKET_COLUMNS)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in report.bucket_rows()]
    lines += [f'- bad `{roots.relative(Path(p))}`: {reason}' for p, reason in sorted(report.bad.items())]
    return '\n'.join(lines)
