"""Typed errors. Every error names its culprit (node, module, file or option) and what to do."""


class FxCompressError(Exception):
    """Base class of every error fxcompress raises on purpose."""


class TraceError(FxCompressError):
    """The model could not be traced into a torch.fx graph."""


class ShapeError(FxCompressError):
    """The model failed to run on the example inputs (usually a wrong input shape)."""


class PassError(FxCompressError):
    """A pass was misconfigured or its requirements are not met."""


class VerificationError(FxCompressError):
    """A transform or lowering changed what the model computes beyond tolerance."""


class ExportError(FxCompressError):
    """An artefact could not be written."""


class CheckpointError(FxCompressError):
    """A checkpoint could not be read or does not fit the model."""


class ModelNotFoundError(FxCompressError):
    """A model name or path did not resolve to a model factory."""


class DataError(FxCompressError):
    """A data set or loader is missing, empty or malformed."""
