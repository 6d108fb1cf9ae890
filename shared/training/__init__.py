"""Training: the train config, the loop, fine-tuning, run checkpoints, schedules, metrics, scale-out."""
