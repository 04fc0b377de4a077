"""Depth motion maps: where the motion is, exact values on a hand-checkable clip, and the errors."""

import numpy as np
import pytest

from karmma.extractors.motion_maps import DepthMotionMaps

BACKGROUND, PERSON = 0.8, 0.5  # reader units (UTD-MHAD: mm / 4000): a wall at 3.2 m, a person at 2 m


def moving_block(frames=6, h=40, w=40):
    """A 10 x 6 block at a fixed depth sliding right one pixel per frame in front of a wall."""
    f = np.full((frames, h, w), BACKGROUND, np.float32)
    for t in range(frames):
        f[t, 15:25, 10 + t : 16 + t] = PERSON
    return f


def test_shape_range_and_a_static_clip_is_all_zeros():
    dmm = DepthMotionMaps(size=16)
    out = dmm(moving_block())
    assert out.shape == (3, 3 * 16 * 16) == (dmm.num_tokens, dmm.dim)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() == pytest.approx(1.0)
    static = np.repeat(moving_block()[:1], 6, axis=0)
    assert not dmm(static).any()


def test_each_view_sees_the_motion_along_its_axes():
    # Sliding sideways at a fixed depth and height: the front and top views see it in every
    # stretch of the clip; the side view (height x depth) sees nothing move.
    out = DepthMotionMaps(size=16)(moving_block()).reshape(3, 3, 16, 16)  # (view, stretch, S, S)
    assert all(out[view, stretch].max() > 0.5 for view in (0, 2) for stretch in range(3))
    assert not out[1].any()
    # Stepping towards the camera instead: now the side view moves too.
    f = np.full((6, 40, 40), BACKGROUND, np.float32)
    for t in range(6):
        f[t, 15:25, 10:16] = PERSON - 0.02 * t
    assert all(DepthMotionMaps(size=16)(f).reshape(3, 3, 16, 16)[1, stretch].max() > 0.3 for stretch in range(3))


def test_top_view_of_a_sideways_step_is_exact():
    # Two frames; one pixel of the person moves one column right. In the top view (depth bin x
    # column) two cells of one row change by 1: cropped to them (1 x 2), padded below to a 2 x 2
    # square and enlarged to 4 x 4, the map is two rows of ones over two rows of zeros. The front
    # view sees the same two pixels change.
    f = np.zeros((2, 3, 4), np.float32)  # 0: no depth reading (not foreground)
    f[0, 1, 1] = f[1, 1, 2] = PERSON
    maps = DepthMotionMaps(size=4)(f).reshape(3, 3, 4, 4)
    expected = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    for view in (0, 2):  # front, top
        for stretch in range(3):  # a 2-frame clip: every stretch is the one step
            assert np.array_equal(maps[view, stretch], expected), (view, stretch)
    # Side view (row x depth bin): the pixel stays in its row and depth bin, so nothing moves.
    assert not maps[1].any()


def test_too_short_clip_names_the_shape():
    with pytest.raises(ValueError, match=r"T >= 2"):
        DepthMotionMaps()(np.zeros((1, 8, 8), np.float32))
