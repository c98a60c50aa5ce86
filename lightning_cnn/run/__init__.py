"""The run core: one Trainer builder, one fit-and-test path, and what keeps a run safe (checks, lock, process
state, atomic checkpoints, per-epoch history)."""
