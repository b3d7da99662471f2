"""The compiler core: `compile`, the pass manager and its context, the pass kinds, typed errors, numerical
verification (all tolerances), reports and atomic file writes."""
