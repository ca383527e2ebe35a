"""Internals of the orchestration environment: config, state, rules, operator, events, encoding."""
