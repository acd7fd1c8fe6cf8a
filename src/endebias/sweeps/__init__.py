"""Sweeps: sweep files, their search spaces, Optuna storage and the agents that run trials."""
