"""The benchmark's chart: fastcells' speed-up over each peer, per cell, mode and shape.

One panel per cell and mode; in each, one group of bars per shape: the time
of PyTorch, ONNX Runtime and the NumPy reference over fastcells' (the
functional call), and of PyTorch and ONNX Runtime over fastcells with
prepared weights (``Stepper.forward``).  Above 1, fastcells is faster.  The
axis is logarithmic with labelled ticks at 1.25x steps near 1, every bar
carries its value, and fastcells' own median time is printed under each
shape (a variable-length row's as ``(<=T,B,I,H)``).  The title
names the machine, fastcells' version, the ISA and the threads every system
ran with (``info["threads"]``, from ``fastcells.bench.threads_info``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastcells.bench import shape_text

#: the tick values of the ratio axis, coarsest level first: powers of two, then the
#: steps between them; a finer level is drawn when the panel has room for all of it
TICK_LEVELS = ((0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0),
               (0.375, 0.75, 1.5, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0, 192.0),
               (0.625, 0.875, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 10.0))
#: the most labelled ticks on a panel's ratio axis
MOST_TICKS = 14
#: inches of one panel
PANEL_HEIGHT = 3.2
#: inches above a panel for its title
PANEL_TITLE = 0.25
#: what each mode's panels are titled
MODE_TITLES = {"fwd": "inference (fwd)", "fwdbwd": "training forward + backward (fwdbwd)"}


@dataclass(frozen=True)
class Series:
    """One kind of bar: its legend label, colour, hatch and its value in a row."""

    label: str
    color: str
    hatch: str
    value: Callable[[dict], float | None]


def _over(system: str, key: str = "ratios") -> Callable[[dict], float | None]:
    return lambda r: r.get(key, {}).get(system)


SERIES = (
    Series("torch / fastcells", "tab:red", "", _over("torch")),
    Series("torch / fastcells prepared", "tab:red", "///", _over("torch", "peer_over_prepared")),
    Series("ort / fastcells", "tab:blue", "", _over("ort")),
    Series("ort / fastcells prepared", "tab:blue", "///", _over("ort", "peer_over_prepared")),
    Series("reference / fastcells", "tab:gray", "", _over("reference")),
)


def threads_title(info: dict) -> str:
    """The title's words on threads: what ``fastcells.bench.threads_info`` says, or
    one thread when the info predates it."""
    return (info.get("threads") or {}).get("title", "every system at 1 thread")


def _label(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _ticks(low: float, high: float, most: int = MOST_TICKS) -> list[float]:
    """The ticks within ``[low, high]``: each level of :data:`TICK_LEVELS` is added while
    the ticks number at most ``most`` (more would overlap their labels)."""
    kept: set[float] = set()
    for level in TICK_LEVELS:
        more = kept | {t for t in level if low <= t <= high}
        if len(more) > most:
            break
        kept = more
    return sorted(kept)


def write_plot(rows: Sequence[dict], info: dict, path: str) -> bool:
    """Draw the chart of ``rows`` (``fastcells.bench.run_row``'s dicts) into the PNG
    ``path``; ``info`` is ``fastcells.bench.machine_info()``.  False if matplotlib
    is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
        from matplotlib.ticker import FixedLocator, NullFormatter
    except ImportError:
        return False
    panels = list(dict.fromkeys((r["cell"], r["mode"]) for r in rows))
    series = [s for s in SERIES if any(s.value(r) for r in rows)]
    values = [v for r in rows for s in series if (v := s.value(r))]
    low, high = min(values + [1.0]) / 1.3, max(values + [1.0]) * 1.6
    ticks = _ticks(low, high)
    # the values of every level in range, unlabelled: grid lines between the labels
    minor = sorted({t for level in TICK_LEVELS for t in level if low <= t <= high} - set(ticks))

    shapes_per_panel = max(sum(1 for r in rows if (r["cell"], r["mode"]) == p) for p in panels)
    width_in = min(max(10.0, 0.36 * shapes_per_panel * len(series) + 2), 20.0)
    top_in = 0.8       # the title's three lines and the legend
    height_in = PANEL_HEIGHT * len(panels) + top_in + 0.3
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, height_in), squeeze=False)
    for ax, (cell, mode) in zip(axes[:, 0], panels):
        mine = [r for r in rows if (r["cell"], r["mode"]) == (cell, mode)]
        shown = [s for s in series if any(s.value(r) for r in mine)]
        bar = 0.8 / max(len(shown), 1)
        for k, s in enumerate(shown):
            for i, r in enumerate(mine):
                v = s.value(r)
                if not v:
                    continue
                x = i + (k - (len(shown) - 1) / 2) * bar
                ax.bar(x, v, bar * 0.95, color=s.color, hatch=s.hatch, edgecolor="white",
                       alpha=0.9 if s.hatch else 1.0)
                ax.text(x, v * 1.04, _label(v), ha="center", va="bottom", fontsize=7,
                        rotation=90 if len(shown) > 3 else 0)
        ax.axhline(1.0, color="black", linewidth=1.0)
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(FixedLocator(minor))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_yticklabels([f"{t:g}x" for t in ticks])
        ax.grid(axis="y", which="major", color="0.8", linewidth=0.7)
        ax.grid(axis="y", which="minor", color="0.92", linewidth=0.5)
        ax.set_axisbelow(True)
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels([f"{shape_text(r)}\nfastcells "
                            f"{r['times']['fastcells']['median_ms']:.3g} ms"
                            if "fastcells" in r["times"] else shape_text(r) for r in mine],
                           fontsize=8)
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.set_title(f"{cell.upper()}, {MODE_TITLES.get(mode, mode)}", fontsize=10, loc="left")
        ax.set_ylabel("speed-up of fastcells (x)", fontsize=8)
    axes[-1, 0].set_xlabel("shape (T, B, I, H): steps, batch, input size, hidden size; "
                           "under it fastcells' median time per call")
    fig.legend(handles=[Patch(facecolor=s.color, hatch=s.hatch, edgecolor="white",
                              label=s.label) for s in series],
               loc="upper center", ncol=min(len(series), 5), fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.58 / height_in), frameon=False)
    fig.suptitle(f"fastcells {info['fastcells']}: speed-up over PyTorch, ONNX Runtime and the "
                 f"NumPy reference\n{info['cpu']}, ISA {info['isa']}, {threads_title(info)}\n"
                 "bar = the other system's time / fastcells' time (above 1x: fastcells is "
                 "faster); hatched: fastcells with prepared weights", fontsize=9,
                 y=1 - 0.05 / height_in, va="top")
    fig.tight_layout()
    # tight_layout leaves room for the suptitle but not for the figure legend: place the top
    fig.subplots_adjust(top=1 - (top_in + PANEL_TITLE) / height_in)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
