"""Training: setup, the loop, resumable state, distributed ranks and run logs."""
