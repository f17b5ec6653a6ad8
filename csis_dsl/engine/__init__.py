"""The shared CSIS engine: train (train.py), infer/Posterior (posterior.py),
checkpoints (checkpoint.py)."""
