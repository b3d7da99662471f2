"""Command-line tools: `python -m fxcompress` (the main job, `fxcompress/__main__.py`) and
`python -m fxcompress.export` (`cli/export.py`); `common` turns typed errors into one line and exit code 2."""
