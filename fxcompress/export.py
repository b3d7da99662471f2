"""`python -m fxcompress.export`: a model to verified ONNX (the tool is `fxcompress.cli.export`)."""
from .cli.common import run_cli
from .cli.export import main

if __name__ == "__main__":
    run_cli("fxcompress.export", main)
