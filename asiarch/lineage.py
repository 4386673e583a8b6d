"""The family tree of an experiment: who descends from whom, and which branches lead to the best.

A search of thousands of candidates is a wide, shallow tree (ASI-Arch's 1,772 experiments:
depth 11, 213 children of the root). Printed whole it is a wall of text, so by default
:func:`render_lineage` shows only the branches that lead to the top-k candidates (the path
from a root to each of them), and folds every other child into one line per parent that
says how many candidates it hides and the best among them. ``all_nodes`` prints every
node; ``max_depth`` folds everything below a depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from asiarch.color import PLAIN, Palette
from asiarch.store import Store, StoreError


@dataclass
class Node:
    id: int
    name: str
    parent: int | None
    origin: str
    status: str
    fitness: float | None
    children: list[int] = field(default_factory=list)


@dataclass
class Lineage:
    """The whole tree, with the scored candidates ranked as the leaderboard ranks them."""

    nodes: dict[int, Node]
    roots: list[int]
    ranked: list[int]  # scored candidates, best first (leaderboard order)

    # ------------------------------------------------------------------ queries
    def path(self, cid: int) -> list[int]:
        """Ids from the root down to ``cid``."""
        out, seen = [], set()
        while cid is not None and cid not in seen:  # `seen`: a corrupt store with a cycle must not hang us
            seen.add(cid)
            out.append(cid)
            cid = self.nodes[cid].parent
        return out[::-1]

    def depth(self, cid: int) -> int:
        return len(self.path(cid)) - 1

    def depths(self) -> dict[int, int]:
        """Depth of every node (roots: 0)."""
        out: dict[int, int] = {}
        stack = [(r, 0) for r in self.roots]
        while stack:
            cid, d = stack.pop()
            out[cid] = d
            stack.extend((c, d + 1) for c in self.nodes[cid].children)
        return out

    def subtree(self, cid: int) -> list[int]:
        """``cid`` and all its descendants, parents before children."""
        out, stack = [], [cid]
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(self.nodes[n].children))
        return out

    def rank_of(self) -> dict[int, int]:
        return {cid: i + 1 for i, cid in enumerate(self.ranked)}

    def top(self, k: int, within: int | None = None) -> list[int]:
        """The ``k`` best new candidates, baselines left out (in the subtree of ``within`` when given);
        the baselines themselves when nothing new is scored yet."""
        new = [c for c in self.ranked if self.nodes[c].origin != "baseline"] or self.ranked
        if within is None:
            return new[:k]
        inside = set(self.subtree(within))
        return [c for c in new if c in inside][:k]

    def subtree_stats(self) -> dict[int, tuple[int, int | None]]:
        """For each node: (number of descendants, id of the best-scored node in its subtree incl. itself)."""
        rank = self.rank_of()
        stats: dict[int, tuple[int, int | None]] = {}
        order = [n for r in self.roots for n in self.subtree(r)]
        for cid in reversed(order):  # children before parents
            node = self.nodes[cid]
            count, best = 0, cid if cid in rank else None
            for ch in node.children:
                c_count, c_best = stats[ch]
                count += 1 + c_count
                if c_best is not None and (best is None or rank[c_best] < rank[best]):
                    best = c_best
            stats[cid] = (count, best)
        return stats


def load_lineage(store: Store) -> Lineage:
    """One query for the whole tree (no code, no scores JSON): fast at thousands of candidates."""
    rows = store.conn.execute("SELECT id, name, parent_id, origin, status, fitness, loss FROM candidates"
                              " ORDER BY id").fetchall()
    nodes = {r[0]: Node(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}
    roots = []
    for n in nodes.values():
        if n.parent is None or n.parent not in nodes:
            n.parent = None
            roots.append(n.id)
        else:
            nodes[n.parent].children.append(n.id)
    loss = {r[0]: r[6] for r in rows}
    scored = [n for n in nodes.values() if n.status == "done" and n.fitness is not None]
    scored.sort(key=lambda n: (-n.fitness, loss[n.id] if loss[n.id] is not None else math.inf, n.id))
    return Lineage(nodes, roots, [n.id for n in scored])


# ---------------------------------------------------------------------------------- text


def _fit(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_lineage(lin: Lineage, *, top: int = 10, all_nodes: bool = False, max_depth: int | None = None,
                   root: int | None = None, palette: Palette = PLAIN, ascii_only: bool = False) -> str:
    """The tree as indented text, one node a line: ``#id name fitness``, with the branch to the best
    new candidate marked ``*``, and the top-k new candidates and the baselines tagged with their
    leaderboard rank, ``[rank N]``.

    By default only the branches to the ``top`` best are drawn and the other children of each
    drawn node are folded into one ``...`` line; ``all_nodes`` draws every node. ``max_depth``
    folds everything deeper (counted from the roots). ``root`` draws one subtree only.
    """
    if root is not None and root not in lin.nodes:
        raise StoreError(f"no candidate with id {root}")
    rank = lin.rank_of()
    roots = [root] if root is not None else lin.roots
    best_ids = lin.top(top, within=root)
    tagged = set(best_ids) | {c for c in rank if lin.nodes[c].origin == "baseline"}
    best_branch = set(lin.path(best_ids[0])) if best_ids else set()
    stats = lin.subtree_stats()
    shown: set[int] | None = None
    if not all_nodes:
        shown = set(roots)
        for t in best_ids:
            shown.update(lin.path(t))
    tee, last, bar, gap = ("|-- ", "`-- ", "|   ", "    ") if ascii_only else ("├── ", "└── ", "│   ", "    ")
    star = "*"

    def label(cid: int) -> str:
        n = lin.nodes[cid]
        mark = palette.paint(star, "green", "bold") if cid in best_branch else " "
        text = f"#{n.id} {n.name}"
        if cid in best_branch:
            text = palette.paint(text, "bold")
        extra = ""
        if n.status != "done":
            extra = " " + palette.status(n.status, n.status)
        elif n.origin == "baseline":
            extra = " " + palette.paint("(baseline)", "dim")
        top_tag = f" [rank {rank[cid]}]" if cid in tagged else ""
        return f"{mark} {text}  {_fit(n.fitness)}{extra}{palette.paint(top_tag, 'yellow')}"

    def folded(ids: list[int], what: str) -> str:
        count = sum(1 + stats[c][0] for c in ids)
        bests = [stats[c][1] for c in ids if stats[c][1] is not None]
        best = min(bests, key=lambda b: rank[b]) if bests else None
        tail = f"; best #{best} {_fit(lin.nodes[best].fitness)}" if best is not None else ""
        return palette.paint(f"  ... {what} ({count} candidates{tail})", "dim")

    total = len(lin.nodes)
    depth_max = max(lin.depths().values(), default=0)
    scope = "every node" if all_nodes else f"the branches to the {len(best_ids)} best new candidates"
    lines = [f"lineage: {total} candidates, {len(lin.roots)} roots"
             + f", depth {depth_max}"
             + f"; showing {scope}" + (f" up to depth {max_depth}" if max_depth is not None else "")
             + ("" if all_nodes else " (--all for every node)") + f"; {star} marks the branch to the best"
             + "; [rank N]: leaderboard rank"]

    # Depth-first with an explicit stack (a chain of thousands must not hit the recursion limit).
    stack: list[tuple] = []
    for r in reversed(roots):
        stack += [("children", r, "", 0), ("root", r)]
    while stack:
        item = stack.pop()
        if item[0] == "root":
            lines.append(label(item[1]))
        elif item[0] == "line":
            lines.append(item[1])
        elif item[0] == "node":
            _, c, prefix, end, depth = item
            lines.append(prefix + (last if end else tee) + label(c))
            stack.append(("children", c, prefix + (gap if end else bar), depth + 1))
        else:
            _, cid, prefix, depth = item
            kids = sorted(lin.nodes[cid].children,
                          key=lambda c: (rank[stats[c][1]] if stats[c][1] is not None else math.inf, c))
            if not kids:
                continue
            if max_depth is not None and depth >= max_depth:
                stack.append(("line", prefix + last + folded(kids, f"{len(kids)} children below depth "
                                                                  f"{max_depth}").lstrip()))
                continue
            drawn = kids if shown is None else [c for c in kids if c in shown]
            hidden = [] if shown is None else [c for c in kids if c not in shown]
            todo: list[tuple] = [("node", c, prefix, i == len(drawn) - 1 and not hidden, depth)
                                 for i, c in enumerate(drawn)]
            if hidden:
                more = "other children" if drawn else "children"
                todo.append(("line", prefix + last + folded(hidden, f"{len(hidden)} {more}").lstrip()))
            stack.extend(reversed(todo))
    return "\n".join(lines)
