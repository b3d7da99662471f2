"""Run by tests/passes/test_resrep.py under `torchrun --nproc_per_node=2`: ResRep on digits with DDP (gloo),
each rank saving its final weights and masks for the test to compare."""
import os
import sys

import torch

import fxcompress
from fxcompress.data import digits
from fxcompress.passes import ResRep

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "prune", "resrep"))
from resrep_models import ResNetDigits  # noqa: E402

out_dir = sys.argv[1]
torch.set_num_threads(1)
torch.manual_seed(0)
rank = int(os.environ["RANK"])
resrep = ResRep(target_macs=0.5, epochs=2, lr=0.03, lasso_strength=1e-2, warmup_epochs=0.5, mask_interval=2,
                step_channels=4, checkpoint_dir=os.path.join(out_dir, "ckpt"))
result = fxcompress.compile(ResNetDigits(), [resrep], torch.randn(1, 1, 8, 8),
                            train_loader=digits("train", batch_size=32), progress=False)
metrics = result.report.records[0].metrics
torch.save({"state": result.model.state_dict(), "widths": [w["after"] for w in metrics["widths"]],
            "history": [h["masked_channels"] for h in metrics["history"]]}, os.path.join(out_dir, f"rank{rank}.pt"))
