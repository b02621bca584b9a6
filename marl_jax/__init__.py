"""marl-jax: the Strategic MARL 30m system's three actors and centralized critic in JAX/Flax,
trained with MAPPO, with a bridge to the original PyTorch checkpoints (``bridge``)."""

from importlib import metadata

try:
    __version__: str = metadata.version("marl-jax")
except metadata.PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "unknown"
