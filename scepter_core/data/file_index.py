"""What a cached run knows of its source files without opening them: per record (its file's
size and modification time, and its span in a shard), the digest of its bytes and its image
size. Kept under CACHE_DIR/files/ in JSON files, one per process that added entries, each
written once under a temporary name and renamed; so a run whose latents are all cached reads
no image at all. Like git's index, an unchanged size and time stand for unchanged bytes."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


class FileIndex:
    """record name -> [stat, digest, height, width]; `put` collects, `flush` writes them."""

    def __init__(self, root: str | Path):
        self.dir = Path(root) / 'files'
        self.entries: dict[str, list] = {}
        for file in sorted(self.dir.glob('*.json')):
            try:
                self.entries.update(json.loads(file.read_text()))
            except (OSError, ValueError):
                continue  # unreadable: its records are simply read again
        self.new: dict[str, list] = {}

    def get(self, name: str, stat: str) -> tuple[str, int, int] | None:
        """(digest, height, width) of `name` when its file still has `stat`."""
        entry = self.entries.get(name)
        return (entry[1], int(entry[2]), int(entry[3])) if entry and entry[0] == stat else None

    def put(self, name: str, stat: str, digest: str, height: int, width: int) -> None:
        self.new[name] = [stat, digest, height, width]

    def flush(self) -> None:
        if not self.new:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f'{time.time_ns():x}-{os.getpid()}.json'
        tmp = final.with_suffix('.tmp')
        tmp.write_text(json.dumps(self.new))
        os.replace(tmp, final)
        self.entries.update(self.new)
        self.new = {}
