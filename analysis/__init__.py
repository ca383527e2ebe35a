"""Analysis: metrics computed from recorded ground-truth events."""
