"""The run layer: the disk side of training and deployment (run directories, Orbax checkpoints
and model directories, model sources and :func:`~marl_jax.run.deploy.load_policy`,
``metrics.jsonl``, reports, plots, backtests, the ``jax.export`` artifact, the training loop).

Who else touches the disk (``docs/architecture.md``): ``config`` and ``sweep.spec`` read YAML,
``env.data`` reads bar files, ``exported`` reads the ``jax.export`` artifact, ``bridge`` reads
and writes ``.pt`` files, ``sweep`` and ``walkforward`` write their ``--out`` folders and
``compat`` its checkpoints; all writes go through :mod:`marl_jax.files` or Orbax. The
algorithm, the environment's dynamics and evaluator, the models, the policy and the metrics
never do.

Importing this package is cheap; the submodules import JAX and Orbax only where they need them.
"""
