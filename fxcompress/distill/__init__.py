"""Knowledge distillation: losses between student and teacher (KD on logits, IRG on instance-relation
graphs, VID on features), feature taps on the fx graph, and the TrainHook that adds them to the shared
training loop (`fxcompress.train.loop.fit`; the FineTune, ResRep, QAT and Distill passes take `hooks`)."""
from .hook import DistillHook
from .irg import IRGLoss
from .kd import KDLoss
from .taps import Tap, install_taps, remove_taps, with_features
from .vid import VIDLoss

__all__ = ["DistillHook", "IRGLoss", "KDLoss", "Tap", "VIDLoss", "install_taps", "remove_taps", "with_features"]
