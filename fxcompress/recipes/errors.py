"""The error a bad recipe raises: one line naming the file, line and key, and what to write instead."""
from ..core.errors import FxCompressError


class RecipeError(FxCompressError):
    """A recipe (YAML file, --set override or `compress` flags) is malformed or names something that is not there."""
