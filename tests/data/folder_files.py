"""Hand-made image folders for the bucketing tests: real PNG/JPEG files of many shapes,
sidecar captions, kohya repeat folders, and broken files of each kind."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

from image_files import gradient_image

# (height, width) of the readable images: tall, wide, square, and one smaller than the budget
SHAPES = [(64, 64), (96, 48), (48, 96), (80, 120), (120, 80), (40, 160), (160, 40), (72, 72), (50, 70),
          (64, 128), (128, 64), (90, 90)]


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels, with no pixel data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 16)))
    return path


def make_folder(root: Path, shapes=SHAPES, captions: bool = True, broken: bool = False) -> Path:
    """Images `i.png` (even i) / `i.jpg` (odd) with `i.txt` captions ("tag i, shape HxW, ...");
    with `broken`: zero.png (0 bytes), text.png (not an image), cut.png (truncated), bomb.png (a
    header of 100000 x 100000), and nocap.png without a caption."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(shapes):
        name = f'{i:02d}.png' if i % 2 == 0 else f'{i:02d}.jpg'
        gradient_image(h, w, seed=i).save(root / name, quality=95)
        if captions:
            (root / f'{i:02d}.txt').write_text(f'tag{i}, shape {h}x{w}, extra one, extra two\n')
    if broken:
        (root / 'zero.png').write_bytes(b'')
        (root / 'text.png').write_text('this is not an image')
        gradient_image(64, 64, seed=99).save(root / 'cut.png')
        data = (root / 'cut.png').read_bytes()
        (root / 'cut.png').write_bytes(data[:len(data) // 3])
        png_header_only(root / 'bomb.png', 100000, 100000)
        gradient_image(64, 64, seed=98).save(root / 'nocap.png')
        for name in ('zero', 'text', 'cut', 'bomb'):
            (root / f'{name}.txt').write_text(f'{name} file')
    return root
