"""FoldBatchNorm: merge every eval-mode BatchNorm into the conv/linear that feeds it (exact)."""
from __future__ import annotations

from fxcompress.fold.batchnorm import exact_folds, fold_batchnorms
from fxcompress.core.pass_base import TransformPass


class FoldBatchNorm(TransformPass):
    """A BatchNorm is folded when its input is a conv/linear module whose output has no other user
    (otherwise the un-normalised value is still needed). Folding uses the running statistics, i.e.
    the model's inference behaviour; BatchNorms that cannot be folded stay and are listed in the report."""
    verify_exact = True

    def run(self, ctx) -> dict:
        folded, skipped = fold_batchnorms(ctx.gm)
        metrics = {"folded": len(folded), "skipped": len(skipped)}
        if skipped:
            metrics["skipped_detail"] = skipped
        return metrics

    def exact_values(self, before, after):
        return exact_folds(before, after)
