"""Plots drawn with Pillow only: several curves against any x axis."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagegpt.viz import _COLORS, plot_loss_curve


def _count(pixels: np.ndarray, color: tuple[int, int, int]) -> int:
    return int((np.abs(pixels.astype(int) - color).sum(axis=1) < 30).sum())


def test_up_to_seven_curves_each_in_its_own_color(tmp_path):
    # probe accuracy against depth, one curve per model; the x axis is a layer, not a step
    records = [{"step": layer, **{f"m{i}": 0.5 + 0.05 * i + 0.01 * layer for i in range(7)}} for layer in range(5)]
    curves = [(f"m{i}", f"model {i} (a long legend label)") for i in range(7)]
    plot_loss_curve(records, tmp_path / "depth.png", curves=curves, ylabel="test accuracy", xlabel="layer")
    pixels = np.asarray(Image.open(tmp_path / "depth.png").convert("RGB")).reshape(-1, 3)
    for color in _COLORS[:6]:  # the seventh, gray, is close to the axes' own grays
        assert _count(pixels, color) > 50
    with pytest.raises(ValueError, match="at most 7 curves"):
        plot_loss_curve(records, tmp_path / "x.png", curves=curves + [("m0", "again")])


def test_the_x_label_is_drawn(tmp_path):
    records = [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]
    plot_loss_curve(records, tmp_path / "a.png", curves=[("loss", "train")])
    plot_loss_curve(records, tmp_path / "b.png", curves=[("loss", "train")], xlabel="images seen (thousands)")
    a = np.asarray(Image.open(tmp_path / "a.png").convert("L"))
    b = np.asarray(Image.open(tmp_path / "b.png").convert("L"))
    bottom = slice(a.shape[0] - 22, a.shape[0])  # the x label's row
    assert (b[bottom] < 128).sum() > 2 * (a[bottom] < 128).sum()
    np.testing.assert_array_equal(a[: a.shape[0] - 22], b[: b.shape[0] - 22])


def test_fractional_x_ticks_keep_their_digits():
    # fine-tuning epochs 0 to 1.95: every tick must read differently ("0.487", not "0"); steps stay whole
    from imagegpt.viz import _tick_label

    ticks = [_tick_label(i * 1.95 / 4, 1.95) for i in range(5)]
    assert ticks == ["0", "0.487", "0.975", "1.46", "1.95"]
    assert [_tick_label(i * 3600 / 4, 3600) for i in range(5)] == ["0", "900", "1800", "2700", "3600"]
    assert _tick_label(1250.5, 3600) == "1250"
