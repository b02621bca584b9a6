"""The run layer: the only code that touches the disk (run directories, checkpoints, reports).

Importing this package is cheap; the submodules import JAX and Orbax only where they need them.
"""
