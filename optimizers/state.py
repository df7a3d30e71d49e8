"""Optimizer state <-> HDF5, bit-exactly.

A state is a plain tree: dicts with string keys, lists/tuples, ``xp`` or
NumPy arrays, Python bool/int/float/str and ``None``. Arrays become datasets
(moved to the host explicitly, dtype kept); scalars become attributes whose
Python type is recorded, so ``load_state(save_state(s)) == s`` exactly and a
resumed run takes the identical next step.
"""
from __future__ import annotations

import json

import h5py
import numpy

from tinygrad2 import backend as B

_KIND = "tinygrad2_kind"


def save_state(group: h5py.Group, state) -> None:
    """Write ``state`` (a dict) into an (empty) HDF5 group."""
    if not isinstance(state, dict):
        raise TypeError(f"save_state: state must be a dict, got {type(state).__name__}")
    _write(group, state)


def load_state(group: h5py.Group):
    """Read back what :func:`save_state` wrote; arrays come back on the backend."""
    return _read(group)


def _write(group, value):
    if isinstance(value, dict):
        group.attrs[_KIND] = "dict"
        for key, item in value.items():
            if not isinstance(key, str) or "/" in key:
                raise ValueError(f"save_state: keys must be strings without '/', got {key!r}")
            _write_item(group, key, item)
    elif isinstance(value, (list, tuple)):
        group.attrs[_KIND] = "list" if isinstance(value, list) else "tuple"
        group.attrs["length"] = len(value)
        for i, item in enumerate(value):
            _write_item(group, str(i), item)
    else:
        raise TypeError(f"save_state: cannot write {type(value).__name__} as a group")


def _write_item(group, key, item):
    if isinstance(item, (dict, list, tuple)):
        _write(group.create_group(key), item)
    elif hasattr(item, "shape") and hasattr(item, "dtype"):
        group.create_dataset(key, data=B.to_host(item))
    elif item is None or isinstance(item, (bool, int, float, str)):
        sub = group.create_group(key)
        sub.attrs[_KIND] = "scalar"
        sub.attrs["json"] = json.dumps({"type": type(item).__name__, "value": _encode(item)})
    else:
        path = f"{group.name.rstrip('/')}/{key}"  # the root group is "/": not "//key"
        raise TypeError(f"save_state: value at '{path}' has unsupported type {type(item).__name__}")


def _encode(x):
    if isinstance(x, float) and not numpy.isfinite(x):
        return repr(x)  # 'nan', 'inf', '-inf'
    if isinstance(x, float):
        return x.hex()  # exact
    return x


def _decode(kind, value):
    if kind == "float":
        return float(value) if value in ("nan", "inf", "-inf") else float.fromhex(value)
    return value


def _read(group):
    kind = group.attrs.get(_KIND)
    if kind == "scalar":
        record = json.loads(group.attrs["json"])
        return _decode(record["type"], record["value"])
    if kind == "dict":
        return {key: _read_item(group[key]) for key in group}
    if kind in ("list", "tuple"):
        items = [_read_item(group[str(i)]) for i in range(int(group.attrs["length"]))]
        return items if kind == "list" else tuple(items)
    raise ValueError(f"load_state: group '{group.name}' was not written by save_state")


def _read_item(node):
    if isinstance(node, h5py.Dataset):
        return B.to_device(node[()])
    return _read(node)


def states_equal(a, b) -> bool:
    """Exact equality of two state trees (arrays bitwise, NaNs equal to NaNs)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape"):
        if not hasattr(b, "shape") or a.shape != b.shape or a.dtype != b.dtype:
            return False
        ha, hb = B.to_host(a), B.to_host(b)
        return ha.tobytes() == hb.tobytes()
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b
