"""Hand-written NumPy references the benchmarks time tinygrad2 against and
validate it with: :mod:`benchmarks.reference.mlp` (gradient and R-operator
HVP of a ReLU MLP) and :mod:`benchmarks.reference.hessian` (dense Hessian of a
tanh/ReLU MLP, K directions at once)."""
