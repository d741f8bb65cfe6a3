"""Generation for the Studio: scepter_core.inference behind a model cache, one lock per
model (requests for the same model wait their turn) and a history kept on disk."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from scepter_core.inference import png_parameters, prepare_model, sample_images
from scepter_core.utils.images import save_png

from .paths import Roots, StudioError

HISTORY = 'history.jsonl'


@dataclass
class Request:
    """What the Generate tab asks for; the same fields as `scepter infer`'s options."""
    model: str
    prompt: str
    n_prompt: str = ''
    loras: list[str] = field(default_factory=list)  # PATH:SCALE, as --lora
    sampler: str | None = None
    steps: int | None = None
    guide_scale: float | None = None
    guide_rescale: float | None = None
    seed: int = -1
    height: int | None = None
    width: int | None = None
    batch: int = 1
    init_image: str | None = None  # img2img (--init-image): a path under the roots
    strength: float | None = None  # --strength

    def sample_overrides(self, seed: int, init_image: str | None = None) -> dict[str, Any]:
        size = [int(self.height), int(self.width)] if self.height and self.width else None
        return {'SAMPLER': self.sampler or None, 'SAMPLE_STEPS': self.steps, 'SEED': seed,
                'GUIDE_SCALE': self.guide_scale, 'GUIDE_RESCALE': self.guide_rescale, 'IMAGE_SIZE': size,
                'INIT_IMAGE': init_image, 'STRENGTH': self.strength if init_image else None}


class Generator:
    """Builds each model once (the last one used stays loaded) and samples with it."""

    def __init__(self, roots: Roots, out_dir: Path, logger: logging.Logger | None = None):
        self.roots = roots
        self.out_dir = out_dir
        self.logger = logger or logging.getLogger('scepter.studio')
        self._model_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._cached: tuple[tuple, Any] | None = None

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._model_locks.setdefault(key, threading.Lock())

    def _model(self, model: Path, loras: list[str]):
        key = (str(model), tuple(loras))
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # free the previous model before building the next
            self._cached = (key, prepare_model(str(model), lora=loras, logger=self.logger))
        return self._cached[1]

    def store_upload(self, path: str | Path) -> str:
        """An uploaded init image, checked to be an image and kept as a PNG named by its content
        under the studio's state (inside the roots, so a Request and its PNG can name it)."""
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as im:
                image = im.convert('RGB')
        except (OSError, UnidentifiedImageError) as e:
            raise StudioError(f'init image: not a readable image ({e})') from e
        digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()[:16]
        target = self.out_dir / 'inputs' / f'{digest}.png'
        if not target.is_file():
            save_png(image, target)
        return self.roots.relative(target)

    def lora_specs(self, loras: list[str]) -> list[str]:
        """`PATH[:SCALE]` entries with PATH checked against the roots."""
        from scepter_core.tuners import parse_lora_spec
        out = []
        for spec in loras:
            path, scale = parse_lora_spec(spec.strip())
            out.append(f'{self.roots.resolve(path)}:{scale}')
        return out

    def generate(self, req: Request, on_step: Callable[[int, int], None] | None = None) -> list[Path]:
        """Sample `req.batch` images, image i with seed + i (so each PNG's parameters
        reproduce it alone); save them with their parameters; append them to the history.
        `on_step(done, total)` follows the sampler steps."""
        if not req.prompt.strip():
            raise StudioError('prompt: empty')
        if not 1 <= int(req.batch) <= 16:
            raise StudioError(f'batch: {req.batch} is not between 1 and 16')
        model_path = self.roots.resolve(req.model)
        loras = self.lora_specs(req.loras)
        init = str(self.roots.resolve(req.init_image)) if req.init_image else None
        paths = []
        with self._lock(str(model_path)):
            model, cfg = self._model(model_path, loras)
            seed = None if int(req.seed) < 0 else int(req.seed)
            steps = int(req.steps or (cfg.get_path('SOLVER.SAMPLE_ARGS') or {}).get('SAMPLE_STEPS') or 1)
            done = [0]

            def callback(_x: Any) -> None:  # after each sampler step
                done[0] += 1
                if on_step is not None:
                    on_step(done[0], steps * int(req.batch))
            for i in range(int(req.batch)):
                outs, args = sample_images(model, cfg, [req.prompt], req.n_prompt or None,
                                           req.sample_overrides(-1 if seed is None else seed + i, init),
                                           intermediate_callback=callback)
                text = png_parameters(req.prompt, req.n_prompt or None, args, req.model, req.loras)
                stamp = f'{time.strftime("%Y%m%d-%H%M%S")}-{time.time_ns() % 10 ** 6:06d}'
                path = self.out_dir / f'{stamp}-{args["SEED"]}.png'
                paths.append(save_png(outs[0]['image'], path, text))
                self._remember(path, text, req, args)
        return paths

    def _remember(self, path: Path, text: str, req: Request, args: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        entry = {'file': path.name, 'time': time.time(), 'parameters': text, 'request': asdict(req),
                 'seed': int(args['SEED'])}
        with open(self.out_dir / HISTORY, 'a') as f:
            f.write(json.dumps(entry) + '\n')

    def history(self) -> list[dict]:
        """Earlier generations, oldest first; entries whose file is gone are skipped."""
        file = self.out_dir / HISTORY
        if not file.is_file():
            return []
        entries = []
        for line in file.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if (self.out_dir / entry.get('file', '')).is_file():
                entries.append(entry)
        return entries
