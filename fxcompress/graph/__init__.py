"""Graph utilities: tracing (`tracing`), shapes on every node (`shapes`), names of tracked tensors
(`keys`), MACs and parameters (`macs`)."""
