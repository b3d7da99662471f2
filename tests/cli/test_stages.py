import torch
import torch.nn as nn

from fxcompress.cli.stages import curve, layer_widths, measure_latency, stage_history, stage_table, widths_before_after
from fxcompress.train.checkpoint import save_checkpoint


def test_layer_widths_and_what_changed():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 10))
    before = layer_widths(model)
    assert before == {"0": 16, "3": 10}
    assert widths_before_after(before, [{"widths": {"0": 16, "3": 10}}]) is None   # nothing pruned
    rows = [{"widths": {"0": 8, "3": 10}}, {"widths": None}]   # the int8 stage has none: the last float one counts
    assert widths_before_after(before, rows) == {"layers": ["0", "3"], "before": [16, 10], "after": [8, 10]}


def test_curves_from_metrics_or_checkpoint(tmp_path):
    history = [{"epoch": 1, "loss": 2.0, "lr": 0.1, "val_top1": 0.5, "masked_channels": 4, "macs": 100},
               {"epoch": 2, "loss": 1.0, "lr": 0.0}]
    assert curve(history) == [{"epoch": 1, "loss": 2.0, "val_top1": 0.5, "masked_channels": 4, "macs": 100},
                              {"epoch": 2, "loss": 1.0}]
    assert stage_history({"history": history}, None) is history
    save_checkpoint({"history": history[:1]}, str(tmp_path / "last.pt"))
    assert stage_history({"train_loss": 1.0}, str(tmp_path)) == history[:1]    # FineTune reports no history
    assert stage_history({}, str(tmp_path / "none")) is None and stage_history({}, None) is None


def test_latency_side_by_side_only_for_files(tmp_path):
    import fxcompress
    from fxcompress.passes import ExportONNX
    x = torch.randn(1, 3, 8, 8)
    paths = {}
    for name, width in (("a", 4), ("b", 8)):
        paths[name] = str(tmp_path / f"{name}.onnx")
        fxcompress.compile(nn.Sequential(nn.Conv2d(3, width, 3)).eval(), [ExportONNX(paths[name])], x, progress=False)
    rows = [{"name": "a", "onnx_path": paths["a"]}, {"name": "mid", "onnx_path": None},
            {"name": "b", "onnx_path": paths["b"]}]
    loader = [(torch.randn(20, 3, 8, 8), torch.zeros(20))]   # fewer than 32 images: repeated up to a batch of 32
    measure_latency(rows, loader, runs=3)
    assert rows[1]["latency_ms"] is None
    assert all(r["latency_ms"]["b1"] > 0 and r["latency_ms"]["b32"] > 0 for r in (rows[0], rows[2]))
    measure_latency(rows, loader, runs=0)
    assert all(r["latency_ms"] is None for r in rows)


def test_stage_table():
    stages = [{"name": "baseline", "precision": "fp32", "top1": 0.9876, "params": 1000, "macs": 2_000_000,
               "onnx_bytes": 4096, "latency_ms": {"b1": 0.5, "b32": 4.0}},
              {"name": "QuantizeINT8", "precision": "int8", "top1": None, "params": 500, "macs": 1_000_000,
               "onnx_bytes": None, "latency_ms": None}]
    lines = stage_table(stages).splitlines()
    assert lines[2] == "| baseline | fp32 | 98.76% | 1.00K | 2.00M | 4.10KB | 0.500 ms | 4.000 ms |"
    assert lines[3] == "| QuantizeINT8 | int8 | - | 500 | 1.00M (50%) | - | - | - |"
