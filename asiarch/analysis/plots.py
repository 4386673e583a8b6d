"""Plots of an experiment, drawn with matplotlib without a display (Agg, no pyplot state).

Each function takes the data to draw (see :mod:`asiarch.analysis.report` for where it comes from),
writes one PNG and returns the series it drew, read back from the drawn artists, so tests
can check that a picture shows what it claims. matplotlib is the ``plots`` extra and is
imported only inside these functions.
"""

from __future__ import annotations

import math
from pathlib import Path

from asiarch.analysis.lineage import Lineage

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
    scatter = ax.scatter([a for a, _ in dots], [f for _, f in dots], s=6 if len(dots) > 300 else 20,
                         color="#9ecae1", alpha=0.8,
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
        ax.legend(loc="best", fontsize=8)
    if x and min(x) >= 0:
        ax.set_xlim(left=0)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.91)
    _save(fig, path)
    offsets = scatter.get_offsets()
    return {"x": list(map(float, line.get_xdata())), "best": list(map(float, line.get_ydata())),
            "dots_x": [float(p[0]) for p in offsets], "dots_y": [float(p[1]) for p in offsets],
            "baselines": drawn_baselines}


def plot_arms(curves: dict[str, tuple[list[float], list[float | None]]], path: str | Path, *,
              title: str = "Best fitness against compute, per proposer arm") -> dict:
    """The ablation plot: one best-so-far step line per proposer arm (e.g. 'llm' and 'offline')
    against the compute that arm spent. Returns ``{arm: {"x", "best"}}`` as drawn."""
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot()
    colors = {"llm": "#08519c", "offline": "#d94801"}
    drawn = {}
    for arm, (x, best) in sorted(curves.items()):
        pts = [(a, b) for a, b in zip(x, best) if b is not None]
        if not pts:
            continue
        (line,) = ax.step([a for a, _ in pts], [b for _, b in pts], where="post", lw=2,
                          color=colors.get(arm), label=f"{arm} proposer")
        drawn[arm] = {"x": list(map(float, line.get_xdata())), "best": list(map(float, line.get_ydata()))}
    ax.set_xlabel("compute spent by the arm (core/GPU-hours)")
    ax.set_ylabel("best fitness so far")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=8)
    ax.set_xlim(left=0)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.91)
    _save(fig, path)
    return drawn


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
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Minor ticks: label 2, 3 and 5 times a power of ten only, so the labels never crowd.
    ax.yaxis.set_minor_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="best")
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
    fig = _figure(9.0, max(2.6, 0.9 + 0.22 * len(labels) * max(1, len(tasks))))
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
        ys = [i - 0.4 + (j + 0.5) * height for i in range(len(tasks))]  # first label on top (y axis inverted)
        vals = [table[label].get(t) for t in tasks]
        keep = [(y, v, t) for y, v, t in zip(ys, vals, tasks) if _finite(v)]
        bars = ax.barh([y for y, _, _ in keep], [v for _, v, _ in keep], height=height * 0.9, color=color,
                       hatch=hatch, edgecolor="white" if hatch is None else "#dddddd", label=label)
        drawn[label] = {t: float(b.get_width()) for (_, _, t), b in zip(keep, bars.patches)}
        for y, v, _ in keep:
            ax.annotate(f"{v:.3f}", (v, y), xytext=(2, 0), textcoords="offset points", va="center", fontsize=6)
    ax.set_yticks(range(len(tasks)))
    ax.set_yticklabels(tasks)
    ax.invert_yaxis()
    ax.set_xlabel("score")
    ax.set_xlim(0, max([v for d in drawn.values() for v in d.values()] + [0.0]) * 1.12 or 1.0)
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    if labels:
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    fig.subplots_adjust(left=min(0.4, 0.03 + 0.0105 * max((len(t) for t in tasks), default=4)), right=0.62,
                        bottom=max(0.08, 0.5 / fig.get_figheight()), top=1 - 0.45 / fig.get_figheight())
    _save(fig, path)
    return drawn


# ---------------------------------------------------------------------------------- lineage


def picture_tree(lin: Lineage, top: int, root: int | None = None
                 ) -> tuple[list[int], set[int], dict[int, int | None], dict[int, list[int]]]:
    """The tree the lineage picture draws: the branches to the ``top`` best new candidates, with
    pass-through nodes (one child on these branches, not among the top) folded into the edge
    that crosses them.

    Returns (best ids, every node on those branches, drawn parent of each drawn node (None for
    roots), the nodes folded into the edge that ends at each drawn node, top to bottom).
    """
    best_ids = lin.top(top, within=root)
    ids: set[int] = set()
    for t in best_ids:
        path = lin.path(t)
        ids.update(path[path.index(root):] if root is not None else path)
    if root is not None:
        ids.add(root)
    kids = {c: [k for k in lin.nodes[c].children if k in ids] for c in ids}
    keep = {c for c in ids if lin.nodes[c].parent is None or c == root or c in best_ids or len(kids[c]) != 1}
    parent: dict[int, int | None] = {}
    folded: dict[int, list[int]] = {}
    for c in keep:
        p, run = (None if c == root else lin.nodes[c].parent), []
        while p is not None and p not in keep:
            run.append(p)
            p = lin.nodes[p].parent
        parent[c], folded[c] = p, run[::-1]
    return best_ids, ids, parent, folded


def lineage_layout(lin: Lineage, parent: dict[int, int | None]) -> dict[int, tuple[float, float]]:
    """Tidy positions for a drawn tree (node -> drawn parent): x = level, y = leaf order, a parent at
    the mean height of its children; children best branch first, as in the text tree."""
    rank = lin.rank_of()
    stats = lin.subtree_stats()
    order = lambda c: (rank[stats[c][1]] if stats[c][1] is not None else math.inf, c)  # noqa: E731
    kids: dict[int, list[int]] = {c: [] for c in parent}
    for c, p in parent.items():
        if p is not None:
            kids[p].append(c)
    pos: dict[int, tuple[float, float]] = {}
    next_leaf = 0.0
    # Post-order with an explicit stack: leaves take the next row, parents the mean of their children.
    for r in sorted((c for c, p in parent.items() if p is None), key=order):
        stack = [(r, 0, False)]
        while stack:
            cid, level, expanded = stack.pop()
            ks = sorted(kids[cid], key=order)
            if not ks:
                pos[cid] = (float(level), next_leaf)
                next_leaf += 1
            elif expanded:
                ys = [pos[c][1] for c in ks]
                pos[cid] = (float(level), sum(ys) / len(ys))
            else:
                stack.append((cid, level, True))
                stack.extend((c, level + 1, False) for c in reversed(ks))
    return pos


def plot_lineage(lin: Lineage, path: str | Path, *, top: int = 10, root: int | None = None,
                 title: str | None = None) -> dict:
    """The branches that lead to the ``top`` best new candidates (in the subtree of ``root`` when
    given), as a tree (roots left): nodes
    coloured by fitness, the top-k starred and named, the branch to the best in red, a grey ``+N``
    under each node for its children not drawn, and runs of single-child ancestors folded into
    their edge (labelled ``k gen. +m``: k generations crossed, m of their other children).

    Returns ``{"nodes": {id: (x, y)}, "edges": [(parent, child)], "folded": {child: [ids folded into
    its edge, top down]}, "best_branch": [ids], "top": [ids]}``.
    """
    best_ids, ids, parent, folded = picture_tree(lin, top, root)
    pos = lineage_layout(lin, parent)
    rank = lin.rank_of()
    best_branch = [c for c in lin.path(best_ids[0]) if c in ids] if best_ids else []
    on_best = set(best_branch)
    levels = max((x for x, _ in pos.values()), default=0)
    rows = max((y for _, y in pos.values()), default=0) + 1
    col_in, label_in = 1.5, 3.8  # inches per level; room for the leaves' labels on the right
    width = min(24.0, 1.2 + col_in * (levels + 1) + label_in)
    fig = _figure(width, min(18.0, 1.9 + 0.55 * rows))
    ax = fig.add_subplot()
    from matplotlib import colormaps  # after _figure, which explains a missing matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    fits = [lin.nodes[c].fitness for c in pos if _finite(lin.nodes[c].fitness)]
    lo, hi = min(fits, default=0.0), max(fits, default=1.0)
    norm = Normalize(lo, hi if hi > lo else lo + 1.0)
    cmap = colormaps["viridis"]
    edges = []
    elbows: dict[bool, list] = {False: [], True: []}  # elbow polylines, off / on the branch to the best
    for cid in sorted(pos):
        p = parent[cid]
        if p is None:
            continue
        (x0, y0), (x1, y1) = pos[p], pos[cid]
        xm = (x0 + x1) / 2
        elbows[cid in on_best and p in on_best].append([(x0, y0), (xm, y0), (xm, y1), (x1, y1)])
        edges.append((p, cid))
        if folded[cid]:
            # The children of the folded generations that are off these branches, counted on the edge.
            off = sum(1 for f in folded[cid] for k in lin.nodes[f].children if k not in ids)
            ax.annotate(f"{len(folded[cid])} gen." + (f" +{off}" if off else ""), ((xm + x1) / 2, y1),
                        xytext=(0, -3), textcoords="offset points", ha="center", va="top", fontsize=6,
                        color="#555555", style="italic", zorder=4)
    ax.add_collection(LineCollection(elbows[False], colors="#999999", linewidths=1.0, zorder=1))
    ax.add_collection(LineCollection(elbows[True], colors="#d62728", linewidths=2.6, zorder=2))
    for star in (False, True):
        pts = [c for c in pos if (c in best_ids) == star]
        ax.scatter([pos[c][0] for c in pts], [pos[c][1] for c in pts], s=180 if star else 70,
                   marker="*" if star else "o", edgecolors="black", linewidths=0.6, zorder=3,
                   c=[cmap(norm(lin.nodes[c].fitness)) if _finite(lin.nodes[c].fitness) else (0.8, 0.8, 0.8, 1.0)
                      for c in pts])
    for cid, (x, y) in pos.items():
        n = lin.nodes[cid]
        fit = f"{n.fitness:.3f}" if _finite(n.fitness) else n.status
        tag = f" [rank {rank[cid]}]" if cid in rank and (cid in best_ids or n.origin == "baseline") else ""
        has_kids = any(parent.get(c) == cid for c in pos)
        if not has_kids:
            ax.annotate(f"#{n.id} {n.name[:40]}  {fit}{tag}", (x, y), xytext=(9, 0), textcoords="offset points",
                        va="center", fontsize=8, fontweight="bold" if cid in on_best else "normal", zorder=4)
        else:
            name = (n.name if len(n.name) <= 18 else n.name[:17] + "…") if parent[cid] is None else ""
            ax.annotate(f"#{n.id} {name}".rstrip() + f"\n{fit}{tag}", (x, y), xytext=(0, 7),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7, linespacing=1.0,
                        zorder=4, bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
        hidden = sum(1 for c in n.children if c not in ids)
        if hidden:
            ax.annotate(f"+{hidden}", (x, y), xytext=(0, -7), textcoords="offset points", ha="center", va="top",
                        fontsize=6, color="#777777", zorder=4)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.02, pad=0.01, label="fitness")
    bar.ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlim(-0.5, levels + label_in / col_in)
    ax.set_ylim(rows - 0.4, -0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    where = f"in the subtree of #{root}" if root is not None else f"of {len(lin.nodes)}"
    ax.set_title(title or f"Branches to the {len(best_ids)} best new candidates (stars) {where}; "
                          f"red: to the best\n+N: children not drawn; 'k gen.': k generations folded into the edge", fontsize=9)
    fig.subplots_adjust(left=0.02, right=1 - 0.75 / width, bottom=0.25 / fig.get_figheight(),
                        top=1 - 0.65 / fig.get_figheight())
    _save(fig, path)
    return {"nodes": pos, "edges": edges, "folded": {c: run for c, run in folded.items() if parent[c] is not None},
            "best_branch": best_branch, "top": best_ids}
