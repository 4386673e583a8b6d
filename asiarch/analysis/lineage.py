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

from asiarch.analysis.format import number
from asiarch.analysis.palette import PLAIN, Palette
from asiarch.store import Store, StoreError, queries


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
    rows = queries.lineage_rows(store)
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


def render_lineage(lin: Lineage, *, top: int = 10, all_nodes: bool = False, max_depth: int | None = None,
                   root: int | None = None, palette: Palette = PLAIN, ascii_only: bool = False) -> str:
    """The tree as indented text, one node a line: ``#id name fitness``, with the branch to the best
    new candidate marked ``*``, and the top-k new candidates and the baselines tagged with their
    leaderboard rank, ``[rank N]``.

    By default only the branches to the ``top`` best new candidates are drawn; the other children
    of a drawn node are summed up at the end of its line, ``(+N other children: M candidates;
    best #id fitness)``. ``all_nodes`` draws every node. ``max_depth`` folds everything deeper
    (generations counted from the roots drawn). ``root`` draws one subtree only.

    Branch points indent their children (``├──``, ``└──``); an only drawn child is drawn under
    its parent at the same indentation, marked ``↳`` (``\\_`` in ASCII), so a long chain of
    generations stays readable instead of marching off to the right.
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
    if ascii_only:
        tee, last, bar, gap, only = "|-- ", "`-- ", "|   ", "    ", "\\_ "
    else:
        tee, last, bar, gap, only = "├── ", "└── ", "│   ", "    ", "↳ "
    star = "*"
    order = lambda c: (rank[stats[c][1]] if stats[c][1] is not None else math.inf, c)  # noqa: E731

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
        tag = palette.paint(f" [rank {rank[cid]}]", "yellow") if cid in tagged else ""
        return f"{mark} {text}  {number(n.fitness, '.3f')}{extra}{tag}"

    def folded(ids: list[int], what: str) -> str:
        count = sum(1 + stats[c][0] for c in ids)
        bests = [stats[c][1] for c in ids if stats[c][1] is not None]
        best = min(bests, key=lambda b: rank[b]) if bests else None
        tail = f"; best #{best} {number(lin.nodes[best].fitness, '.3f')}" if best is not None else ""
        return "  " + palette.paint(f"(+{len(ids)} {what}: {count} candidates{tail})", "dim")

    total = len(lin.nodes)
    scope = "every node" if all_nodes else f"the branches to the {len(best_ids)} best new candidates"
    lines = [f"lineage: {total} candidates, {len(lin.roots)} roots, depth {max(lin.depths().values(), default=0)}"
             f"; showing {scope}" + (f" up to depth {max_depth}" if max_depth is not None else "")
             + ("" if all_nodes else " (--all for every node)")
             + f"; {star} marks the branch to the best; [rank N]: leaderboard rank; {only.strip()}: only child shown"]

    # Depth-first with an explicit stack (a chain of thousands must not hit the recursion limit).
    # Each item: (node, text before its label, prefix of its children's lines, depth).
    stack: list[tuple[int, str, str, int]] = [(r, "", "", 0) for r in reversed(roots)]
    while stack:
        cid, lead, prefix, depth = stack.pop()
        kids = sorted(lin.nodes[cid].children, key=order)
        if max_depth is not None and depth >= max_depth:
            drawn, hidden, what = [], kids, f"children below depth {max_depth}"
        else:
            drawn = kids if shown is None else [c for c in kids if c in shown]
            hidden = [] if shown is None else [c for c in kids if c not in shown]
            what = "other children" if drawn else "children"
        lines.append(lead + label(cid) + (folded(hidden, what) if hidden else ""))
        if len(drawn) == 1:
            stack.append((drawn[0], prefix + only, prefix, depth + 1))
        else:
            for i, c in reversed(list(enumerate(drawn))):
                end = i == len(drawn) - 1
                stack.append((c, prefix + (last if end else tee), prefix + (gap if end else bar), depth + 1))
    return "\n".join(lines)
