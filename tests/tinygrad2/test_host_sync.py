"""Host synchronisation audit: on a GPU every device-to-host transfer stalls the
stream, so a forward-over-reverse pass may make at most one (getitem's mask of
which entries of the flat tangent are live, see ``directions.tracked``),
however many parameter slices the net cuts from θ."""
from __future__ import annotations

import numpy as np
import pytest

import tinygrad2 as tg
from _helpers import ROWS
from nets import MLP, ResNet18, SmallCNN
from tinygrad2 import backend, directions, memory


@pytest.fixture
def transfers(monkeypatch):
    """Counts calls of backend.to_host (the one device-to-host door)."""
    count = [0]
    to_host = backend.to_host

    def counted(array):
        count[0] += 1
        return to_host(array)

    monkeypatch.setattr(backend, "to_host", counted)
    return count


NETS = {
    "mlp": (lambda: MLP([8, 6, 3]), (5, 8)),
    "cnn": (lambda: SmallCNN(widths=(2, 3), hidden=5, in_channels=1, image_size=16, num_classes=3), (4, 1, 16, 16)),
    "resnet18": (lambda: ResNet18(in_channels=1, num_classes=3, stem="cifar", width=1 / 16), (2, 1, 8, 8)),
}


def _objective(name, rng, on_device=False):
    make, shape = NETS[name]
    net = make()
    X, y = rng.standard_normal(shape), rng.integers(0, 3, shape[0])
    move = backend.to_device if on_device else (lambda a: a)
    obj = net.objective("cross_entropy", move(X), move(y))
    return obj, move(net.init_theta(seed=1, dtype=np.float64))


@pytest.mark.cpu_only  # counts NumPy-backend transfers on host data; the device counts are the SYNCS tests
@pytest.mark.parametrize("name", sorted(NETS))
def test_one_mask_transfer_per_hvp_pass(name, rng, float64, transfers):
    obj, theta = _objective(name, rng)
    V = rng.standard_normal((3, theta.shape[0]))
    obj.hvp(theta, V)
    assert transfers[0] == 1, f"{name}: an HVP pass made {transfers[0]} host transfers"
    transfers[0] = 0
    obj.loss_and_grad(theta)
    assert transfers[0] == 0


def _synchronisations(call):
    """Every device-to-host synchronisation of ``call()`` on the emulated device
    (float, bool, item, asnumpy, ...: what would stall a GPU stream)."""
    from _device import SYNCS

    SYNCS.clear()
    call()
    return sum(SYNCS.values()), dict(SYNCS)


def test_objective_synchronisations_do_not_grow_with_the_number_of_parameter_slices(rng, float64):
    # the MLP has 4 parameter slices, ResNet18 62: the same few synchronisations per call
    from _device import emulated

    counts = {}
    with emulated():
        for name in sorted(NETS):
            obj, theta = _objective(name, rng, on_device=True)
            V = backend.to_device(rng.standard_normal((3, theta.shape[0])))
            counts[name] = {
                "hvp": _synchronisations(lambda: obj.hvp(theta, V))[0],
                "loss_and_grad": _synchronisations(lambda: obj.loss_and_grad(theta))[0],
                "ggn_vp": _synchronisations(lambda: obj.ggn_vp(theta, V))[0],
            }
    assert len({tuple(c.items()) for c in counts.values()}) == 1, counts
    assert counts["mlp"]["hvp"] <= 4 and counts["mlp"]["loss_and_grad"] <= 3, counts


@pytest.mark.cpu_only  # counts NumPy-backend transfers on host data; the device counts are the SYNCS tests
def test_dense_hessian_makes_one_transfer_per_chunk(rng, float64, transfers):
    obj, theta = _objective("cnn", rng)
    n = theta.shape[0]
    chunk = -(-n // 4)
    H = obj.hessian(theta, chunk=chunk)
    assert transfers[0] == 4
    # the skipped blocks are exact zeros of the tangent, not approximations
    E = np.eye(n)[:7]
    np.testing.assert_allclose(H[:7], tg.functional.checked_hvp(obj._scalar_of("hvp"), theta, E), atol=1e-12)


@pytest.mark.cpu_only  # counts NumPy-backend transfers on host data; the device counts are the SYNCS tests
def test_a_direction_array_changed_in_place_between_passes_is_not_stale(rng, float64):
    # the live mask is cached per leaf tangent object; a caller that reuses its
    # direction buffer (V[:] = ...) must still get the products of the new V
    obj, theta = _objective("mlp", rng)
    n = theta.shape[0]
    f = obj._scalar_of("hvp")
    V = np.zeros((2, n))
    V[:, :3] = 1.0                      # only the first block is live
    tg.hvp(f, theta, V)
    V[:] = rng.standard_normal((2, n))  # now every block is
    np.testing.assert_allclose(tg.hvp(f, theta, V), tg.hvp(f, theta, V.copy()), rtol=1e-12)


@pytest.mark.cpu_only  # host arrays and NumPy-backend transfer counts
def test_a_tracked_tangents_slices_read_its_mask_on_the_host(rng, transfers):
    V = np.zeros((2, 10))
    V[1, 6] = 2.0
    view = directions.tracked(V)
    assert transfers[0] == 1 and view is not V
    assert directions.known_live(view).tolist() == [False] * 6 + [True] + [False] * 3
    x = tg.Tensor(np.ones(10), tangent=view)
    x.tangent = view
    halves = x[0:6], x[4:8]
    assert halves[0].tangent is None and transfers[0] == 1
    np.testing.assert_array_equal(halves[1].tangent, V[:, 4:8])
    assert directions.known_live(V) is None  # the caller's own array is never tracked


@pytest.mark.cpu_only  # host arrays and NumPy-backend transfer counts
def test_dense_tracked_directions_mark_every_slice_live_without_a_mask(rng, transfers):
    """Directions nonzero in every column are marked ALL_LIVE: their slices,
    and the slices of those, inherit the mark (no mask to cut, no transfer)."""
    V = rng.standard_normal((2, 10))
    view = directions.tracked(V)
    assert transfers[0] == 1 and directions.known_live(view) is directions.ALL_LIVE
    x = tg.Tensor(np.ones(10), tangent=view)
    x.tangent = view
    half = x[2:9]
    quarter = half[1:4]
    assert directions.known_live(half.tangent) is directions.ALL_LIVE
    assert directions.known_live(quarter.tangent) is directions.ALL_LIVE and transfers[0] == 1
    np.testing.assert_array_equal(quarter.tangent, V[:, 3:6])
    V[:, 4] = 0.0  # one dead column: a mask again
    assert directions.known_live(directions.tracked(V)).tolist() == [True] * 4 + [False] + [True] * 5


@pytest.mark.cpu_only  # host arrays
def test_a_leaf_kept_across_passes_sees_its_directions_changed_in_place(rng, float64):
    # a user's leaf is not tracked: every slice asks the device, so a direction
    # buffer changed in place between two passes gives the new products
    obj, theta = _objective("mlp", rng)
    n, f = theta.shape[0], obj._scalar_of("hvp")
    V = np.zeros((1, n))
    V[0, :3] = 1.0
    th = tg.Tensor(theta, requires_grad=True, tangent=V)

    def hv():
        th.grad = None
        f(th).backward()
        return th.grad.tangent

    hv()
    V[:] = rng.standard_normal((1, n))
    np.testing.assert_allclose(hv(), tg.hvp(f, theta, V), rtol=1e-12, atol=1e-14)


def test_a_device_scalar_index_on_a_tracked_tangent_asks_the_device():
    # a 0-d device integer (e.g. from xp.argmax) cannot index a host mask
    from _device import emulated

    with emulated() as xp:
        V = directions.tracked(xp.asarray(np.eye(4)[:2]))
        x = tg.Tensor(xp.arange(4.0), tangent=V)
        x.tangent = V
        i = xp.argmax(xp.asarray([0.0, 5.0, 1.0, 0.0]))
        np.testing.assert_array_equal(backend.to_host(x[i].tangent), [0.0, 1.0])
        assert x[2].tangent is None


def test_a_tangents_only_backward_on_a_freed_graph_says_so():
    x = tg.Tensor(backend.xp.ones(3), requires_grad=True, tangent=backend.xp.ones(3))
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="freed"):
        y.backward(tangents_only=True)


def _second_step(name, sizes):
    """(count, kinds) of the synchronisations of an optimizer's second step on an MLP of
    ``sizes`` (float64, batch 16), with the emulated device installed by the caller."""
    net, rng = MLP(sizes), np.random.default_rng(0)
    obj = net.objective("cross_entropy", backend.to_device(rng.standard_normal((16, sizes[0]))),
                        backend.to_device(rng.integers(0, sizes[-1], 16)))
    theta = backend.to_device(net.init_theta(seed=1, dtype=np.float64))
    opt = ROWS[name]()
    theta, state, _ = opt.step(obj, theta, opt.init(theta))
    return _synchronisations(lambda: opt.step(obj, theta, state))


# synchronisations that legitimately grow with the problem: HF and Gauss-Newton
# read each CG iteration's residual on the host (their stopping rule), Shampoo
# checks each preconditioner side for overflow before its eigh on refresh steps
PER_ITERATION = {"HessianFree", "GaussNewton", "Shampoo"}


@pytest.mark.parametrize("name", sorted(set(ROWS) - PER_ITERATION))
def test_an_optimizer_step_synchronises_as_often_for_two_layers_as_for_five(name, monkeypatch):
    from _device import emulated

    # dense curvature (Newton, DampedNewton) synchronises a fixed few times per chunk of
    # directions; one chunk here (n = 53 and 143), so that only a per-layer cost would show
    monkeypatch.setattr(memory, "preferred_chunk", 256)
    with emulated():
        shallow, deep = _second_step(name, [6, 5, 3]), _second_step(name, [6, 5, 5, 5, 5, 3])
    assert shallow == deep
    assert shallow[0] <= 40, shallow


def sync_table():
    """Markdown rows: synchronisations of one optimizer step (the second) on the
    emulated device, MLP 6-5-3 and 6-5-5-5-5-3, float64, batch 16."""
    from _device import SYNCS, emulated

    rows = ["| optimizer | 2 layers | 5 layers | by kind (5 layers) |", "|---|---|---|---|"]
    with emulated():
        for name in ROWS:
            (a, _), (b, kinds) = _second_step(name, [6, 5, 3]), _second_step(name, [6, 5, 5, 5, 5, 3])
            rows.append(f"| {name} | {a} | {b} | {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))} |")
    SYNCS.clear()
    return "\n".join(rows)


if __name__ == "__main__":  # PYTHONPATH=.:tests python tests/tinygrad2/test_host_sync.py
    print(sync_table())
