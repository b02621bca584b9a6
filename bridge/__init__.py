"""Bridge between the original PyTorch Strategic MARL checkpoints and marl-jax (uses torch)."""

from bridge.convert import (
    BridgeError,
    StrategicCheckpoint,
    flax_to_torch,
    load_pt_checkpoint,
    new_checkpoint,
    save_pt_checkpoint,
    torch_to_flax,
)

__all__ = [
    "BridgeError",
    "StrategicCheckpoint",
    "flax_to_torch",
    "load_pt_checkpoint",
    "new_checkpoint",
    "save_pt_checkpoint",
    "torch_to_flax",
]
