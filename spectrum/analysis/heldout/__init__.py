"""The held-out-runs tests: :mod:`.targets` (what is measured among held-out runs),
:mod:`.param_model` and :mod:`.token_model` (the per-token model of the sigmoid parameters in
ln M and ln D, fitted over token chunks), :mod:`.baselines` and :mod:`.scaling` (the power laws
and nulls beside it), :mod:`.scores` (scores with intervals, verdicts in words),
:mod:`.heldout_runs` (the held-out-runs and leave-one-run-out tests) and :mod:`.prediction_table`
(the rows of ``reconstruction/predictions.parquet``)."""
