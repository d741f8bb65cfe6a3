"""Attack corpus, recipes: malformed YAML and values get one line naming file or key."""
from __future__ import annotations

from pathlib import Path

from harness import cli, judge


def test_malformed_yaml_names_the_file_and_line(tmp_path: Path):
    bad = tmp_path / 'broken.yaml'
    bad.write_text('SOLVER:\n  NAME: [unclosed\n')
    judge('malformed yaml', cli('config', 'validate', '--cfg', str(bad)), names=['broken.yaml'])
