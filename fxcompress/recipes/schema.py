"""The recipe schema: the sections of a recipe, the passes a pipeline may name and each one's options.

A recipe (YAML):

    title: ResNet-20 on CIFAR-10                    # optional
    model: {name: resnet20, checkpoint: r20.pt}     # registry, torchvision or file.py:factory name; `pretrain:
                                                    # {epochs: 8}` trains it first
    data: {kind: cifar10}                           # cifar10 | image_folder | digits
    pipeline:                                       # passes in order, each `Name` or `Name: {options}`
      - ResRep: {target_macs: 0.5, epochs: 20}
      - Distill: {losses: [kd], epochs: 5}
      - FoldBatchNorm
      - QuantizeINT8: {method: kl}
      - ExportONNX
    settings: {device: cpu, seed: 0}                # optional
    output: runs/r20                                # optional; --output wins

Pass options mirror the pass constructors (their defaults are the constructors'; a test keeps them equal);
what a YAML file cannot hold (teacher modules, hooks, loss functions) is left out, and the runner owns
checkpoint_dir, resume and progress. Two options exist only in recipes: `distill` on ResRep and FineTune
(train with a teacher's soft targets: kd or irg, the teacher being the model the recipe loads) and its
`distill_temperature`.
"""
from __future__ import annotations

from typing import Dict

from .options import REQUIRED, Option

SCHEDULES = ("cosine", "onecycle", "constant")
LATENCY_RUNTIMES = ("onnxruntime-fp32", "onnxruntime-int8")   # fxcompress.latency.runtime.RUNTIMES
DATA_KINDS = ("cifar10", "image_folder", "digits")


def _training(epochs: int, lr: float, seed: bool = True) -> Dict[str, Option]:
    """Options every training pass shares (fxcompress.train.loop.TrainConfig)."""
    opts = {"epochs": Option("int", epochs, low=1), "lr": Option("number", lr, low=0, low_open=True),
            "weight_decay": Option("number", 5e-4, low=0), "schedule": Option("choice", "cosine", choices=SCHEDULES),
            "max_steps_per_epoch": Option("int", None, low=1, nullable=True)}
    if seed:
        opts["seed"] = Option("int", 0, low=0)
    return opts


_HOOK_DISTILL = {"distill": Option("choices", None, choices=("kd", "irg"), nullable=True),
                 "distill_temperature": Option("number", 4.0, low=0, low_open=True)}

# prune to a fraction of the latency measured on a runtime (fxcompress/latency/) instead of MACs
_LATENCY_TARGET = {
    "target_latency": Option("number", None, low=0, high=1, low_open=True, high_open=True, nullable=True),
    "runtime": Option("choice", "onnxruntime-fp32", choices=LATENCY_RUNTIMES),
    "threads": Option("int", 2, low=1),
    "batch": Option("int", 1, low=1),
    "relative_to": Option("choice", None, choices=LATENCY_RUNTIMES, nullable=True),
}

PASSES: Dict[str, Dict[str, Option]] = {
    "CountFlops": {"top": Option("int", 5, low=1)},
    "ResRep": {
        # None: 0.5 unless target_latency is given
        "target_macs": Option("number", None, low=0, high=1, low_open=True, high_open=True, nullable=True),
        "lasso_strength": Option("number", 1e-4, low=0),
        **_training(10, 0.01),
        "warmup_epochs": Option("number", 1.0, low=0),
        "mask_interval": Option("int", 200, low=1),
        "step_channels": Option("int", 4, low=1),
        "min_channels": Option("int", 1, low=1),
        "round_to": Option("int", 1, low=1),
        "compactor_momentum": Option("number", 0.99, low=0, high=1, high_open=True),
        "momentum": Option("number", 0.9, low=0, high=1, high_open=True),
        "ignore": Option("strings", []),
        "max_full_channels": Option("int", None, low=1, nullable=True),
        "group_score": Option("choice", "mean", choices=("mean", "sum")),
        **_LATENCY_TARGET,
        **_HOOK_DISTILL,
    },
    "MagnitudePrune": {
        "ratio": Option("number", 0.5, low=0, high=1, high_open=True),
        "norm": Option("number", 1, low=0, low_open=True),
        "round_to": Option("int", 1, low=1),
        "global_ranking": Option("bool", False),
        "ignore": Option("strings", []),
        "target_macs": Option("number", None, low=0, high=1, low_open=True, high_open=True, nullable=True),
        "refine": Option("bool", True),
        "min_channels": Option("int", 1, low=1),
        **_LATENCY_TARGET,
    },
    "FineTune": {**_training(1, 0.01), **_HOOK_DISTILL},
    "Distill": {
        "losses": Option("choices", ["kd"], choices=("kd", "irg", "vid")),
        "student_nodes": Option("strings", []),
        "teacher_nodes": Option("strings", None, nullable=True),
        "weights": Option("number_or_numbers", 1.0, low=0),
        "task_weight": Option("number", 1.0, low=0),
        "temperature": Option("number", 4.0, low=0, low_open=True),
        **_training(1, 0.01),
    },
    "FoldBatchNorm": {},
    "QuantizeINT8": {
        "method": Option("choice", "kl", choices=("kl", "minmax", "percentile")),
        "num_bins": Option("int", 2048, low=2),
        "num_quantized_bins": Option("int", 128, low=2),
        "percentile": Option("number", 99.99, low=0, high=100, low_open=True),
        "per_channel": Option("bool", True),
        "symmetric_weights": Option("bool", True),
        "calib_batches": Option("int", None, low=1, nullable=True),
        "qat_epochs": Option("int", 0, low=0),
        "qat_lr": Option("number", 1e-3, low=0, low_open=True),
        "min_input_channels": Option("int", 1, low=1),
        "bias_correction": Option("bool", True),
        "weight_bits": Option("choice", "auto", choices=("auto", 8, 7)),
    },
    "ExportONNX": {
        "path": Option("str", "compressed.onnx"),   # relative to the output folder
        "opset": Option("int", None, low=7, nullable=True),
        "dynamic_batch": Option("bool", True),
        "verify": Option("bool", True),
    },
}
# options that exist only in recipes (not constructor arguments), and defaults a recipe sets differently
RECIPE_ONLY = {"distill", "distill_temperature"}
RECIPE_DEFAULTS = {("ExportONNX", "path")}
TRAINING_PASSES = ("ResRep", "FineTune", "Distill")
# what may follow QuantizeINT8: the graph then carries fake-quant modules, which only these read
AFTER_QUANTIZE = ("ExportONNX", "CountFlops")

SECTIONS: Dict[str, Dict[str, Option]] = {
    "model": {
        "name": Option("str"),
        "checkpoint": Option("path", None, nullable=True),
        "num_classes": Option("int", None, low=1, nullable=True),   # passed to the factory when given
        "leaf": Option("strings", []),
    },
    "data": {
        "kind": Option("choice", choices=DATA_KINDS),
        "path": Option("path", None, nullable=True),
        "train_split": Option("str", "train"),
        "val_split": Option("str", "val"),
        "image_size": Option("ints", None, low=1, nullable=True, length=2),
        "batch_size": Option("int", None, low=1, nullable=True),
        "eval_batch_size": Option("int", 256, low=1),
        "augment": Option("bool", None, nullable=True),
        "mean": Option("numbers", None, nullable=True),
        "std": Option("numbers", None, low=0, low_open=True, nullable=True),
        "calib_images": Option("int", 512, low=1),
        "train_limit": Option("int", None, low=1, nullable=True),
        "val_limit": Option("int", None, low=1, nullable=True),
    },
    "settings": {
        "device": Option("str", "cpu"),
        "seed": Option("int", 0, low=0),
        "threads": Option("int", None, low=1, nullable=True),
        "latency_runs": Option("int", 30, low=0),
    },
}
# model.pretrain (optional): train the loaded model first, e.g. a registry model without a checkpoint
PRETRAIN: Dict[str, Option] = {**_training(REQUIRED, 0.1), "momentum": Option("number", 0.9, low=0, high=1,
                                                                              high_open=True)}
SUBSECTIONS = {("model", "pretrain"): PRETRAIN}
TOP_LEVEL = {"title": Option("str", None, nullable=True), "output": Option("path", None, nullable=True),
             **{name: None for name in SECTIONS}, "pipeline": None}
