"""Hyperparameter sweeps: a population of MAPPO runs trained as one batched program."""
