"""The evaluation PNGs are readable: checked on the figures `dynlm.eval.plots` saves, as drawn.

Every test calls a public `plot_*` function, catches the figure it saves and inspects it after drawing it
(the layout is final then): styles, scales, tick labels and where texts and legends land in the figure.
"""
import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.text import Text

from dynlm.eval.plots import plot_article_ppl, plot_instant_gain, plot_position


@pytest.fixture
def saved(monkeypatch):
    """The figures passed to `savefig` (still usable after `plt.close`)."""
    figures = []
    savefig = Figure.savefig

    def record(fig, *args, **kwargs):
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def _drawn(fig):
    canvas = FigureCanvasAgg(fig)  # `plt.close` left the figure a bare canvas: give it one that draws
    canvas.draw()
    return canvas.get_renderer()


def _inside(inner, outer, tol=0.5) -> bool:
    return (inner.x0 >= outer.x0 - tol and inner.y0 >= outer.y0 - tol
            and inner.x1 <= outer.x1 + tol and inner.y1 <= outer.y1 + tol)


def _nothing_cut(fig, renderer):
    """Everything drawn (titles, labels, tick labels, legends) lies inside the figure: nothing is cut."""
    assert _inside(fig.get_tightbbox(renderer), fig.bbox_inches, tol=0.01)


def _texts_reading(fig, strings):
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text() in strings]


def test_static_curve_is_drawn_distinctly_and_on_top(tmp_path, saved):
    """The adaptive curves often coincide with static (a meta-learner that starts as dyneval, an article's
    first tokens): the static line must still be visible, in a style of its own."""
    centers = [(i + 0.5) / 10 for i in range(10)]
    static = [5.0 + 0.2 * math.sin(i) for i in range(10)]
    loss = {"static": static, "dyneval": list(static), "learned": list(static)}  # all three on the same points
    gain = {"dyneval": [0.0] * 10, "learned": [0.0] * 10}
    path = plot_position(centers, loss, gain, tmp_path / "loss_by_position.png", "valid")
    assert path.read_bytes()[:4] == b"\x89PNG"
    fig = saved[-1]
    _drawn(fig)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    line, others = lines["static"], [lines["dyneval"], lines["learned"]]
    assert line.get_visible()
    for other in others:
        assert line.get_zorder() > other.get_zorder()  # drawn over the others
        assert (line.get_linestyle(), to_rgb(line.get_color())) != (other.get_linestyle(), to_rgb(other.get_color()))
    # As seen: pixels of the static colour along the curve, outside the legend (hidden, there would be none).
    image = np.asarray(fig.canvas.buffer_rgba())[::-1, :, :3].astype(float) / 255  # row 0 at the bottom
    box, legend = ax.get_window_extent(), ax.get_legend().get_window_extent()
    ys, xs = np.nonzero(np.abs(image - to_rgb(line.get_color())).max(axis=2) < 0.1)
    on_curve = ((xs > box.x0 + 3) & (xs < box.x1 - 3) & (ys > box.y0 + 3) & (ys < box.y1 - 3)
                & ~((xs >= legend.x0) & (xs <= legend.x1) & (ys >= legend.y0) & (ys <= legend.y1)))
    assert on_curve.sum() > 0.25 * box.width  # dashed: about half the curve's length shows
    # The gain panel's zero line is the static reference too, drawn the same way.
    zero = {line.get_label(): line for line in fig.axes[1].get_lines()}["static (no gain)"]
    assert zero.get_linestyle() == line.get_linestyle() and to_rgb(zero.get_color()) == to_rgb(line.get_color())


def _rows(titles):
    return [{"index": i, "title": t, "tokens": 100, "static": {"ppl": 120.0 + 10 * i}, "dyneval": {"ppl": 100.0 + i}}
            for i, t in enumerate(titles)]


def test_article_ppl_names_the_articles_on_a_linear_scale(tmp_path, saved):
    titles = ["M @-@ 82 ( Michigan highway )", "2011 – 12 Michigan Wolverines men 's basketball team", "<unk> <unk>"]
    plot_article_ppl(_rows(titles), ["static", "dyneval"], tmp_path / "article_ppl.png", max_articles=60)
    fig = saved[-1]
    renderer = _drawn(fig)
    ax = fig.axes[0]
    # Titles joined back from WikiText's tokens and shortened, after the index (HTML page, CSV row).
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "0: M-82 (Michigan highway)", "1: 2011 – 12 Michigan Wolverin…", "2: <unk> <unk>"]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0.0
    _nothing_cut(fig, renderer)  # long rotated titles included
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())  # never on the bars


def test_instant_gain_titles_and_legend_stay_off_the_curves(tmp_path, saved):
    titles = ["Homarus gammarus", "Sonic the Hedgehog ( 1991 video game )", "Frank <unk>", "Papa <unk>"]
    t = torch.linspace(0, 1, 4000, dtype=torch.float64)
    gains = {"dyneval": torch.sin(20 * t), "learned": torch.cos(20 * t)}  # curves reach every corner of the plot
    plot_instant_gain(gains, [0, 1200, 2500, 3600], titles, 100, tmp_path / "instant_gain.png", offset=500)
    fig = saved[-1]
    renderer = _drawn(fig)
    ax = fig.axes[0]
    data = ax.get_window_extent()  # the plotting area, where the curves are
    _nothing_cut(fig, renderer)
    labels = _texts_reading(fig, {"Homarus gammarus", "Sonic the Hedgehog (1991 vi…", "Frank <unk>", "Papa <unk>"})
    assert len(labels) == 4  # every article is named, shortened and readable
    for label in labels + [ax.title]:
        assert _inside(label.get_window_extent(), fig.bbox), label.get_text()
    for label in labels:
        box = label.get_window_extent()
        assert not box.overlaps(data), label.get_text()  # not on the curves, nor across the y axis
        assert not box.overlaps(ax.title.get_window_extent()), label.get_text()
    assert not ax.get_legend().get_window_extent().overlaps(data)  # the legend covers no curve
    assert ax.title.get_window_extent().y0 >= max(x.get_window_extent().y1 for x in labels) - 0.5
