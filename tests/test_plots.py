"""Charts: PNGs of the expected size, and no figure kept alive by pyplot after the caller lets go."""
import math

from PIL import Image

from components.plots import bar_chart, line_chart, robustness_figure, scatter_chart


def _charts():
    yield bar_chart({"train": [5, 3, 1], "val": [2, 1, 1]}, ["a", "b", "c"], "counts", "images")
    yield line_chart({"d_loss": [1.0, 0.5, 0.4], "g_loss": [2.0, 1.5, 1.2]}, "losses", "step")
    yield scatter_chart([1e-4, 1e-3, 1e-2], [0.3, 0.2, math.nan], "score", "lr", "score", logx=True)
    rows = [{"attack": "fgsm", "eps": e, "accuracy": 1 - e} for e in (0.0, 0.1)]
    yield robustness_figure(rows, [{"eps": e, "rec_mse": e, "label_flip_rate": e} for e in (0.0, 0.1)],
                            [{"eps": e, "accuracy": 1 - e} for e in (0.0, 0.1)])


def test_each_chart_saves_a_png_of_its_figure_size(tmp_path):
    sizes = []
    for i, fig in enumerate(_charts()):
        fig.savefig(tmp_path / f"{i}.png", dpi=100)
        sizes.append(Image.open(tmp_path / f"{i}.png").size)
    assert sizes == [(700, 350), (700, 350), (500, 350), (1200, 350)]


def test_a_diverged_trial_is_marked_in_the_scatter_with_a_legend():
    assert scatter_chart([1, 2], [0.5, math.inf], "s", "x", "y").axes[0].get_legend() is not None
    assert scatter_chart([1, 2], [0.5, 0.4], "s", "x", "y").axes[0].get_legend() is None


def test_many_charts_leave_no_figure_open_in_pyplot():
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    for _ in range(8):  # 32 figures: pyplot-made ones would all still be open (and warn past 20)
        for fig in _charts():
            fig.canvas.draw()
    assert set(plt.get_fignums()) == before
