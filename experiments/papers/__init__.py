"""The four papers' main tables, regenerated on the real data sets.

==============================  ==============================================================
``mlp-mnist-newton``            "Second-order Optimization Made Practical for Deep Learning"
                                (JAX, V100): MLP on MNIST, SGD vs dense Newton, damped Newton,
                                Hessian-free Newton and Hessian-free Gauss-Newton
``cnn-cifar10-quasi-newton``    "Second-order Optimization Methods in Deep Neural Networks
                                Training" (PyTorch): SmallCNN on CIFAR-10, SGD, SGD-momentum,
                                Adam, AdaHessian, SGD-BB, L-BFGS (theirs returned NaN)
``resnet18-mnist-hybrid``       "Discussion on the viability of a modern second order method"
                                (PyTorch, K80): ResNet18 on 2% MNIST, mean ± std over
                                repetitions, the SGD-momentum -> AdaHessian hybrid
``sgdph-cifar10``               "SGD with Partial Hessian": VGG11 with BN, without a norm and
                                with WN on CIFAR-10; SGD-PH with row sums (the paper) vs the exact
                                diagonal, and the measured off-diagonal mass of the BN γ blocks
==============================  ==============================================================

Each runs by one command (``python -m experiments run NAME``) with a default
sized for a 2-core CPU (minutes), ``--full`` for the paper's scale and
``--quick`` for a smoke test of a few batches. Every run writes its HDF5
results file; the experiment prints the table in the paper's shape with the
paper's numbers beside ours, an analysis (saved as ``NAME_analysis.json``
beside the runs) and the learning-curve PNG.

One module per paper (its citation, scales, methods, the paper's numbers,
the notes on our setup, the analysis); :mod:`.common` holds what they and
:mod:`experiments.catalog` share. Nothing here imports the catalog: the
catalog imports :func:`paper_experiments`.

Nothing here changes an optimizer: the "paper" rows use the optimizers with
the paper's settings; rows marked "(ours)" in the notes are the remedies.
"""
from __future__ import annotations

from . import cnn_cifar10_quasi_newton, mlp_mnist_newton, resnet18_mnist_hybrid, sgdph_cifar10

PAPERS = (mlp_mnist_newton, cnn_cifar10_quasi_newton, resnet18_mnist_hybrid, sgdph_cifar10)


def paper_experiments() -> dict:
    """{name: Experiment} of the four papers (the catalog registers them)."""
    return {paper.EXPERIMENT.name: paper.EXPERIMENT for paper in PAPERS}
