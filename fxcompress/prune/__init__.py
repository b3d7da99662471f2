"""Structured channel pruning: channel groups (`groups`, built by `builder` from the op rules that
`coupling` applies), plans (`state`: masks and predicted shapes; `plan`: scores, ratios, MACs targets),
physical removal and its exactness check (`apply`), and the probe that checks the predictions (`probe`)."""
