"""What the analyses read of each run: :mod:`.run_data` (losses summed per sequence, a chunked
reader of the per-token annotations and fits), :mod:`.fit_summary` and :mod:`.stepwise` (the
run's fits counted once at load), :mod:`.curves` (mean-loss curves under the bootstrap over
sequences, and the finite-difference operator) and :mod:`.token_passes` (per-token work as a map
over token ranges followed by a sum), :mod:`.schedule` (each run's learning rates) and
:mod:`.reliability` (per-token results compared across seed replicas)."""
