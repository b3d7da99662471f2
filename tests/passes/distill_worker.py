"""Run by tests/passes/test_distill.py under `torchrun --nproc_per_node=2`: Distill (KD + VID) on digits with
DDP (gloo), each rank saving the student's weights and the VID loss's parameters."""
import os
import sys

import torch

import fxcompress
from fxcompress.data import digits
from fxcompress.distill import DistillHook, KDLoss, VIDLoss
from fxcompress.models import get_model
from fxcompress.passes import FineTune

out_dir = sys.argv[1]
torch.set_num_threads(1)
torch.manual_seed(0)
teacher, student = get_model("small_cnn", width=16).eval(), get_model("small_cnn", width=8)
vid = VIDLoss(8, 16)
hook = DistillHook(teacher, [KDLoss(), vid], student_nodes=["features_5"], teacher_nodes=["features_5"])
result = fxcompress.compile(student, [FineTune(epochs=1, lr=0.05, hooks=[hook], max_steps_per_epoch=6)],
                            torch.randn(1, 1, 8, 8), train_loader=digits("train", batch_size=32), progress=False)
torch.save({"student": result.model.state_dict(), "vid": vid.state_dict()},
           os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
