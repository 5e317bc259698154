"""What a run keeps on disk: paths and atomic writes, the lock, checkpoints, the metrics and results files."""
