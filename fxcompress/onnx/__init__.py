"""ONNX: writing files (`write`), running them in onnxruntime (`runtime`), and measuring them honestly
(`measure`: accuracy on a loader, latency of several models side by side)."""
