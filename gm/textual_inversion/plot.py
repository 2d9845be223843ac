"""``loss.png``: the plot of a run's ``loss.csv``, drawn by matplotlib on its Agg canvas (no pyplot, so the
backend of a process that imports the toolkit is left alone).

Panels, sharing the step axis: the training loss (raw and a moving average) with the validation loss and,
on a second axis, the concept meter's scores; the norm of each learned vector per encoder beside the mean
norm of the encoder's ordinary words (dashed); the learning rate. Non-finite values are left out.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gm.files import atomic_output


def column(rows, name):
    """float64 values of column ``name`` (NaN where empty or not finite)."""
    values = np.asarray([np.nan if r.get(name) is None else r[name] for r in rows], np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def moving_average(values, window):
    """Trailing mean of the last ``window`` finite values at each point (NaN before the first)."""
    out = np.full(len(values), np.nan)
    finite = np.flatnonzero(np.isfinite(values))
    for k, i in enumerate(finite):
        out[i] = values[finite[max(0, k - window + 1):k + 1]].mean()
    return out


def save_plot(rows, path):
    """Draw ``rows`` (loss.csv rows, {column: value}) to the PNG file ``path``, atomically."""
    names = list(rows[0]) if rows else []
    norms = [n for n in names if n.startswith("norm_")]
    meter = [n for n in names if n.startswith("concept_") or n.endswith("_concept")]
    panels = 2 + bool(norms)
    figure = Figure(figsize=(8, 2.6 * panels), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    steps = column(rows, "step")
    loss = column(rows, "loss")
    ax = axes[0]
    ax.plot(steps, loss, color="#aabee6", linewidth=0.8, label="loss")
    ax.plot(steps, moving_average(loss, max(1, len(rows) // 20)), color="#143ca0", linewidth=1.6,
            label="loss, moving average")
    if "validation_loss" in names:
        validation = column(rows, "validation_loss")
        shown = np.isfinite(validation)
        ax.plot(steps[shown], validation[shown], "o-", color="#d0602a", label="validation loss")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    handles, labels = ax.get_legend_handles_labels()
    if meter:
        twin = ax.twinx()
        for name in meter:
            values = 100 * column(rows, name)
            shown = np.isfinite(values)
            twin.plot(steps[shown], values[shown], "s--", linewidth=1, label=f"{name} (%)")
        twin.set_ylabel("concept meter, % of samples")
        twin.set_ylim(-2, 102)
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize="small", loc="upper right")
    if norms:
        ax = axes[1]
        encoders = dict.fromkeys(n.rsplit("_", 1)[0][len("norm_"):] for n in norms)  # clip_l, clip_g in order
        for encoder, colour in zip(encoders, ("#2a9d3f", "#143ca0", "#8e44ad")):
            for name in (n for n in norms if n.startswith(f"norm_{encoder}_")):
                ax.plot(steps, column(rows, name), color=colour, linewidth=1,
                        label=f"{encoder} vectors" if name.endswith("_0") else None)
            if f"word_norm_{encoder}" in names:
                ax.plot(steps, column(rows, f"word_norm_{encoder}"), "--", color=colour, linewidth=1,
                        label=f"{encoder} ordinary words (mean)")
        ax.set_ylabel("vector norm")
        ax.set_title("norms of the learned vectors")
        ax.legend(fontsize="small", loc="upper left")
    ax = axes[-1]
    ax.plot(steps, column(rows, "lr"), color="black", linewidth=1)
    ax.set_ylabel("learning rate")
    ax.set_xlabel("optimiser step")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
