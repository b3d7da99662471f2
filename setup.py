from setuptools import find_packages, setup

setup(
    name="fxcompress",
    version="0.1.0",
    description="A model-compression compiler for PyTorch built on torch.fx: pruning, distillation, INT8, ONNX.",
    python_requires=">=3.10",
    # passes/ lives at the top of the repository but installs as fxcompress.passes: never as `passes`.
    packages=[*find_packages(include=["fxcompress", "fxcompress.*"]), "fxcompress.passes"],
    package_dir={"fxcompress": "fxcompress", "fxcompress.passes": "passes"},
    install_requires=[
        # onnxscript: imported by torch.onnx's exporter, not by fxcompress itself
        "torch>=2.4", "numpy", "scipy", "networkx", "onnx", "onnxruntime", "onnxscript", "tqdm", "Pillow",
        # matplotlib: every run's report.html embeds its figures, and `explain` draws the group graph
        "matplotlib",
        "pyyaml",   # recipes (fxcompress/recipes)
    ],
    package_data={"fxcompress.recipes": ["shipped/*.yaml"]},
    extras_require={
        # timm: the canonical-form tests build its layers (a test dependency, never a runtime one)
        "test": ["pytest", "pytest-xdist", "torchvision", "scikit-learn", "timm"],
        "figs": ["matplotlib"],
        "bench": ["torchvision", "scikit-learn", "torch-pruning", "matplotlib", "timm", "ultralytics"],
    },
)
