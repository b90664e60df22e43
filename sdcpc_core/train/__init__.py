"""Training: losses (and, with the training milestone, the trainer)."""
