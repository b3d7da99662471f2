"""python -m fxcompress: `run`, `compress`, `explain`; with no command, the main job (the shipped digits
recipe: a small CNN trained on scikit-learn's digits, then ResRep -> KD -> INT8 -> verified ONNX, with the
report), writing into fxcompress_out/. See fxcompress/cli/main.py."""
from .cli.main import entry

if __name__ == "__main__":
    entry()
