"""Benchmarks of tinygrad2 against hand-written NumPy references (and PyTorch
when it is importable). Run from the repository root::

    python -m benchmarks.engine       # MLP gradient and HVP vs NumPy by hand
    python -m benchmarks.curvature    # dense Hessians vs a NumPy R-operator
    python -m benchmarks.nets         # SmallCNN and ResNet18 vs torch eager

Each takes ``--quick`` (a tiny smoke configuration), ``--threads N``,
``--data-dir DIR`` and ``--no-verify``; see :mod:`benchmarks.harness`. This
folder is not part of the installed package.
"""
