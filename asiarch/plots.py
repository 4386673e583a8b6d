"""Plots of an experiment, drawn with matplotlib without a display (Agg, no pyplot state).

Each function takes the data to draw (see :mod:`asiarch.report` for where it comes from),
writes one PNG and returns the series it drew, read back from the drawn artists, so tests
can check that a picture shows what it claims. matplotlib is the ``plots`` extra and is
imported only inside these functions.
"""

from __future__ import annotations

import math
from pathlib import Path

from asiarch.lineage import Lineage

DPI = 110
# Colours for up to ten candidates (matplotlib's tab10), baselines in greys.
_TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
_GREYS = ("#000000", "#555555", "#888888", "#aaaaaa")


class PlotError(RuntimeError):
    pass


def _figure(width: float, height: float):
    """A figure with an Agg canvas; no pyplot, so no display and no global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("plots need matplotlib, which is not installed here: pip install 'asiarch[plots]' "
                        "(or `asiarch report DIR --no-plots` for the HTML without plots)") from None
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------------------------- discovery


def best_so_far(values: list[float | None]) -> list[float | None]:
    """Running maximum, None until the first value."""
    out, best = [], None
    for v in values:
        if _finite(v) and (best is None or v > best):
            best = v
        out.append(best)
    return out


def plot_discovery(x: list[float], fitness: list[float | None], path: str | Path, *, xlabel: str,
                   title: str, baselines: dict[str, float] | None = None) -> dict:
    """Each candidate's fitness (dots) and the best so far (a step line) against ``x``.

    Returns ``{"x", "best", "dots_x", "dots_y", "baselines"}``, as drawn.
    """
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    best = best_so_far(fitness)
    dots = [(a, f) for a, f in zip(x, fitness) if _finite(f)]
    scatter = ax.scatter([a for a, _ in dots], [f for _, f in dots], s=6, color="#9ecae1", alpha=0.7,
                         label="each candidate", zorder=1)
    line_pts = [(a, b) for a, b in zip(x, best) if b is not None]
    (line,) = ax.step([a for a, _ in line_pts], [b for _, b in line_pts], where="post", color="#08519c", lw=2,
                      label="best so far", zorder=3)
    drawn_baselines = {}
    for i, (name, value) in enumerate(sorted((baselines or {}).items(), key=lambda kv: -kv[1])):
        h = ax.axhline(value, color=_GREYS[i % len(_GREYS)], ls="--", lw=1, label=f"baseline {name}", zorder=2)
        drawn_baselines[name] = float(h.get_ydata()[0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fitness")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if dots or drawn_baselines:
        ax.legend(loc="lower right", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.91)
    _save(fig, path)
    offsets = scatter.get_offsets()
    return {"x": list(map(float, line.get_xdata())), "best": list(map(float, line.get_ydata())),
            "dots_x": [float(p[0]) for p in offsets], "dots_y": [float(p[1]) for p in offsets],
            "baselines": drawn_baselines}


# ---------------------------------------------------------------------------------- curves


def plot_curves(curves: dict[str, tuple[list[float], list[float]]], path: str | Path, *,
                baselines: set[str] = frozenset(), title: str = "Training loss") -> dict:
    """Training loss against step, one line per candidate; baselines dashed in greys.

    ``curves`` maps a label to (steps, losses). Returns ``{label: (steps, losses)}`` as drawn.
    """
    fig = _figure(8.0, 4.6)
    ax = fig.add_subplot()
    drawn = {}
    ci = gi = 0
    for label, (xs, ys) in curves.items():
        pts = [(a, b) for a, b in zip(xs, ys) if _finite(b) and b > 0]
        if not pts:
            continue
        if label in baselines:
            style = {"color": _GREYS[gi % len(_GREYS)], "ls": "--", "lw": 1.6}
            gi += 1
        else:
            style = {"color": _TAB10[ci % len(_TAB10)], "lw": 1.4}
            ci += 1
        (line,) = ax.plot([a for a, _ in pts], [b for _, b in pts], label=label, **style)
        drawn[label] = (list(map(float, line.get_xdata())), list(map(float, line.get_ydata())))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.11, top=0.92)
    _save(fig, path)
    return drawn


# ---------------------------------------------------------------------------------- tasks


def plot_tasks(table: dict[str, dict[str, float]], path: str | Path, *, baselines: set[str] = frozenset(),
               title: str = "Task scores") -> dict:
    """Grouped horizontal bars: for each task, one bar per candidate.

    ``table`` maps a candidate label to {task: score}. Returns ``{label: {task: score}}`` as drawn.
    """
    tasks = sorted({t for scores in table.values() for t in scores})
    labels = list(table)
    fig = _figure(8.0, max(2.5, 0.9 + 0.22 * len(labels) * max(1, len(tasks))))
    ax = fig.add_subplot()
    drawn: dict[str, dict[str, float]] = {}
    height = 0.8 / max(1, len(labels))
    ci = gi = 0
    for j, label in enumerate(labels):
        if label in baselines:
            color, hatch = _GREYS[gi % len(_GREYS)], "//"
            gi += 1
        else:
            color, hatch = _TAB10[ci % len(_TAB10)], None
            ci += 1
        ys = [i + 0.4 - (j + 0.5) * height for i in range(len(tasks))]
        vals = [table[label].get(t) for t in tasks]
        keep = [(y, v, t) for y, v, t in zip(ys, vals, tasks) if _finite(v)]
        bars = ax.barh([y for y, _, _ in keep], [v for _, v, _ in keep], height=height * 0.9, color=color,
                       hatch=hatch, edgecolor="white" if hatch is None else "#dddddd", label=label)
        drawn[label] = {t: float(b.get_width()) for (_, _, t), b in zip(keep, bars.patches)}
    ax.set_yticks(range(len(tasks)))
    ax.set_yticklabels(tasks)
    ax.invert_yaxis()
    ax.set_xlabel("score")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    if labels:
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    fig.subplots_adjust(left=min(0.4, 0.04 + 0.012 * max((len(t) for t in tasks), default=4)), right=0.66,
                        bottom=max(0.08, 0.5 / fig.get_figheight()), top=1 - 0.45 / fig.get_figheight())
    _save(fig, path)
    return drawn


# ---------------------------------------------------------------------------------- lineage


def lineage_layout(lin: Lineage, ids: set[int]) -> dict[int, tuple[float, float]]:
    """Tidy positions for the sub-forest ``ids`` (closed under parents): x = depth, y = leaf order,
    a parent at the mean height of its children. Children best branch first, as in the text tree."""
    rank = lin.rank_of()
    stats = lin.subtree_stats()
    pos: dict[int, tuple[float, float]] = {}
    next_leaf = [0.0]

    def kids(cid):
        ks = [c for c in lin.nodes[cid].children if c in ids]
        return sorted(ks, key=lambda c: (rank[stats[c][1]] if stats[c][1] is not None else math.inf, c))

    roots = [r for r in lin.roots if r in ids]
    roots.sort(key=lambda r: (rank[stats[r][1]] if stats[r][1] is not None else math.inf, r))
    # Post-order with an explicit stack: leaves take the next row, parents the mean of their children.
    for r in roots:
        stack = [(r, 0, False)]
        while stack:
            cid, depth, expanded = stack.pop()
            ks = kids(cid)
            if not ks:
                pos[cid] = (float(depth), next_leaf[0])
                next_leaf[0] += 1
            elif expanded:
                ys = [pos[c][1] for c in ks]
                pos[cid] = (float(depth), sum(ys) / len(ys))
            else:
                stack.append((cid, depth, True))
                stack.extend((c, depth + 1, False) for c in reversed(ks))
    return pos


def plot_lineage(lin: Lineage, path: str | Path, *, top: int = 10, title: str | None = None) -> dict:
    """The branches that lead to the ``top`` best candidates, as a tree (roots left), nodes coloured
    by fitness, the branch to the best drawn thick, the top-k starred and named, and a grey
    ``+N`` beside each node for the children the picture leaves out.

    Returns ``{"nodes": {id: (x, y)}, "edges": [(parent, child)], "best_branch": [ids], "top": [ids]}``.
    """
    best_ids = lin.top(top)
    ids: set[int] = set()
    for t in best_ids:
        ids.update(lin.path(t))
    pos = lineage_layout(lin, ids)
    rank = lin.rank_of()
    best_branch = lin.path(best_ids[0]) if best_ids else []
    depth = max((x for x, _ in pos.values()), default=0)
    rows = max((y for _, y in pos.values()), default=0) + 1
    col_in, label_in = 1.45, 4.2  # inches per generation; room for the leaves' labels on the right
    width = min(20.0, 1.6 + col_in * (depth + 1) + label_in)
    fig = _figure(width, min(16.0, 1.8 + 0.5 * rows))
    ax = fig.add_subplot()
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    fits = [lin.nodes[c].fitness for c in ids if _finite(lin.nodes[c].fitness)]
    norm = Normalize(min(fits, default=0.0), max(fits, default=1.0) if fits and max(fits) > min(fits) else
                     (min(fits, default=0.0) + 1.0))
    cmap = colormaps["viridis"]
    from matplotlib.collections import LineCollection

    edges = []
    on_best = set(zip(best_branch, best_branch[1:]))
    elbows: dict[bool, list] = {False: [], True: []}  # elbow polylines, off / on the branch to the best
    for cid in sorted(ids):
        parent = lin.nodes[cid].parent
        if parent is None or parent not in ids:
            continue
        (x0, y0), (x1, y1) = pos[parent], pos[cid]
        xm = (x0 + x1) / 2
        elbows[(parent, cid) in on_best].append([(x0, y0), (xm, y0), (xm, y1), (x1, y1)])
        edges.append((parent, cid))
    ax.add_collection(LineCollection(elbows[False], colors="#999999", linewidths=1.0, zorder=1))
    ax.add_collection(LineCollection(elbows[True], colors="#d62728", linewidths=2.6, zorder=2))
    for star in (False, True):
        pts = [c for c in pos if (c in best_ids) == star]
        ax.scatter([pos[c][0] for c in pts], [pos[c][1] for c in pts], s=170 if star else 70,
                   marker="*" if star else "o", edgecolors="black", linewidths=0.6, zorder=3,
                   c=[cmap(norm(lin.nodes[c].fitness)) if _finite(lin.nodes[c].fitness) else (0.8, 0.8, 0.8, 1.0)
                      for c in pts])
    for cid, (x, y) in pos.items():
        n = lin.nodes[cid]
        is_top = cid in best_ids
        hidden = len([c for c in n.children if c not in ids])
        leaf = not any(c in ids for c in n.children)
        fit = f"{n.fitness:.3f}" if _finite(n.fitness) else n.status
        if leaf:
            text = f"#{n.id} {n.name[:40]}  {fit}" + (f"  [rank {rank[cid]}]" if cid in rank else "")
            ax.annotate(text, (x, y), xytext=(9, 0), textcoords="offset points", va="center", fontsize=8,
                        fontweight="bold" if cid in best_branch else "normal", zorder=4)
        else:
            short = n.name if len(n.name) <= 18 else n.name[:17] + "…"
            text = f"#{n.id} {short}\n{fit}" + (f" [rank {rank[cid]}]" if cid in rank and (is_top or n.origin ==
                                                                                         "baseline") else "")
            ax.annotate(text, (x, y), xytext=(0, 7), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, linespacing=1.0, zorder=4, bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                                                    "alpha": 0.8})
        if hidden:
            ax.annotate(f"+{hidden}", (x, y), xytext=(0, -8), textcoords="offset points", ha="center", va="top",
                        fontsize=6, color="#777777", zorder=4)
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.02, pad=0.01, label="fitness")
    ax.set_xlim(-0.5, depth + (width - 1.6 - col_in * (depth + 1)) / col_in + 0.3)
    ax.set_ylim(rows - 0.4, -0.8)
    ax.set_xticks(range(int(depth) + 1))
    ax.set_xlabel("generation (depth below the baselines)")
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"Branches to the {len(best_ids)} best new candidates (stars) of {len(lin.nodes)}\n"
                          f"red: the branch to the best; +N: children not drawn", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.97, bottom=0.7 / fig.get_figheight(), top=1 - 0.6 / fig.get_figheight())
    _save(fig, path)
    return {"nodes": pos, "edges": edges, "best_branch": best_branch, "top": best_ids}
