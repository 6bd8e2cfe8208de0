"""Per-token losses: the evaluator of a checkpoint and the trajectories read back from shards."""
