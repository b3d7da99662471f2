"""Training: the one loop every training pass shares (`loop`: fit, evaluate, TrainHook, TrainConfig) and
checkpoints (`checkpoint`, read with weights_only=True)."""
