"""Training: the one run handle, the trainer in this process, the training methods, launching worker
processes, tracking, and a run as a plain script."""
