"""Training: independent learners from YAML configs."""
