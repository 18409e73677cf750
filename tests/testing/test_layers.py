"""check_layer works on a copy of the layer and leaves the global random state alone."""
from __future__ import annotations

import numpy as np

import minidl as mdl
from minidl.testing import check_layer, functional_call


def test_check_layer_leaves_the_users_layer_as_it_was():
    eager = mdl.nn.Linear(5, 3)
    weight = eager.weight
    values = weight.numpy().copy()
    assert check_layer(eager, (2, 5))
    assert eager.weight is weight and weight.dtype == np.float32  # was converted to float64 in place
    np.testing.assert_array_equal(weight.numpy(), values)
    lazy = mdl.nn.Conv2d(out_channels=2, kernel_size=3)
    assert check_layer(lazy, (2, 3, 5, 5))
    assert lazy.weight is None and lazy.in_channels is None  # still unbuilt: its first input decides
    assert lazy(mdl.tensor(np.zeros((1, 4, 5, 5), np.float32))).dtype == np.float32


def test_check_layer_and_functional_call_leave_the_global_random_state_alone():
    mdl.random.manual_seed(123)
    expected = mdl.random.uniform((4,), "float32")
    mdl.random.manual_seed(123)
    assert check_layer(mdl.nn.Dropout(0.5), (4, 6))  # seeds its own draws for a fixed mask
    dropout = mdl.nn.Dropout(0.5)
    first = functional_call(dropout, [], mdl.tensor(np.ones((4, 6), np.float32)), seed=7)
    again = functional_call(dropout, [], mdl.tensor(np.ones((4, 6), np.float32)), seed=7)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    np.testing.assert_array_equal(mdl.random.uniform((4,), "float32"), expected)  # as if nothing had run


def test_fork_rng_restores_seed_and_state():
    mdl.random.manual_seed(5)
    mdl.random.uniform((3,), "float32")
    state = mdl.random.get_state()
    with mdl.random.fork_rng():
        mdl.random.manual_seed(0)
        mdl.random.uniform((10,), "float32")
    assert mdl.random.get_state() == state
