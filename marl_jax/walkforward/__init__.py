"""Walk-forward evaluation: folds with a purge, selection on validation, one read of each test
fold (``python -m marl_jax.walkforward``).

- :mod:`~marl_jax.walkforward.folds`: the fold arithmetic (pure);
- :mod:`~marl_jax.walkforward.fold_run`: one fold as a run of :mod:`marl_jax.run`;
- :mod:`~marl_jax.walkforward.sweep`: one fold as a sweep's population (``--sweep``);
- :mod:`~marl_jax.walkforward.pooled`: ``returns.csv``, ``report.json``, the equity curve;
- :mod:`~marl_jax.walkforward.driver`: the whole walk-forward, resumable.
"""

from marl_jax.walkforward.driver import WalkForwardSpec, walk_forward
from marl_jax.walkforward.folds import Fold, WalkForwardError, make_folds

__all__ = ["Fold", "WalkForwardError", "WalkForwardSpec", "make_folds", "walk_forward"]
