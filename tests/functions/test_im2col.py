"""im2col / col2im (minidl/functions/im2col.py) against explicit windows, and as adjoints."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidl.functions import Window
import minidl as mdl
from minidl.functions.im2col import ConvGeometry, col2im, im2col
from minidl.testing import strategies as mst

from ._conv_reference import channels_last_copy, nc, pool_geometry
from ._opcheck import op_settings


@st.composite
def im2col_cases(draw):
    (h, w), kernel, stride, padding, dilation, ceil_mode = draw(pool_geometry(dilated=True))
    win = Window(*kernel, *stride, *padding, *dilation)
    oh, ow = win.output_hw(h, w, ceil_mode)
    x = draw(mst.arrays(shape=nc(draw) + (h, w)))
    return x, win, oh, ow


def _np_windows(x, win, oh, ow, pad_value):
    """(N, C, oh, ow, kh, kw) by explicit indexing; positions outside x hold pad_value."""
    n, c, h, w = x.shape
    out = np.full((n, c, oh, ow, win.kh, win.kw), pad_value)
    for r in range(oh):
        for q in range(ow):
            for i in range(win.kh):
                for j in range(win.kw):
                    y, z = r * win.sy - win.ph + i * win.dy, q * win.sx - win.pw + j * win.dx
                    if 0 <= y < h and 0 <= z < w:
                        out[:, :, r, q, i, j] = x[:, :, y, z]
    return out


@op_settings()
@given(case=im2col_cases(), pad_value=st.sampled_from([0.0, -np.inf]), channels_last=st.booleans())
def test_im2col_matches_explicit_windows(case, pad_value, channels_last):
    x, win, oh, ow = case
    expected = _np_windows(x, win, oh, ow, pad_value)
    stored = channels_last_copy(x) if channels_last else x
    np.testing.assert_array_equal(im2col(stored, win, oh, ow, pad_value=pad_value), expected)


@op_settings()
@given(case=im2col_cases(), data=st.data())
def test_col2im_is_the_adjoint_of_im2col(case, data):
    # <im2col(x), c> == <x, col2im(c)> for every x and c
    x, win, oh, ow = case
    col = im2col(x, win, oh, ow)
    c = data.draw(mst.arrays(shape=col.shape), label="c")
    folded = col2im(c, win, x.shape)
    assert folded.shape == x.shape
    np.testing.assert_allclose(np.vdot(col, c), np.vdot(x, folded), rtol=1e-10, atol=1e-10)




@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (4, 2, 1, 1), ((2, 1), (0, 1), 2, 2)])
def test_conv_geometry_cuda_kernels_match_the_numpy_path(stride, padding, dilation, groups, rng, cuda):
    # columns and both folds on a GPU (one gather kernel each) against the strided NumPy copies
    xp = mdl.Device(cuda).xp
    x = rng.standard_normal((2, 4, 11, 12))
    win = Window.make(3, stride, padding, dilation)
    geo = ConvGeometry(x.shape, win, groups)
    col = geo.columns(x)
    np.testing.assert_array_equal(xp.asnumpy(geo.columns(xp.asarray(channels_last_copy(x)))), col)
    gcol = rng.standard_normal(col.shape)
    np.testing.assert_allclose(xp.asnumpy(geo.fold(xp.asarray(gcol))), geo.fold(gcol), rtol=1e-12, atol=1e-12)
    gcol_t = np.ascontiguousarray(gcol.transpose(0, 2, 1))
    np.testing.assert_allclose(xp.asnumpy(geo.fold_tap_major(xp.asarray(gcol_t))), geo.fold_tap_major(gcol_t),
                               rtol=1e-12, atol=1e-12)
