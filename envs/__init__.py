"""Environments: the orchestration platform in which peer-preservation can emerge."""
