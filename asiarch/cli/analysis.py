"""Commands that read an experiment (never write its store; safe while the head runs):
status, leaderboard, show, diff, lineage, report, export.

The text comes from :mod:`asiarch.analysis`; these handlers open the store read-only, pick the
palette for stdout and print. Each command's parser is built right below its handler.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from asiarch.cli.common import die


# ---------------------------------------------------------------------- asiarch status DIR


def cmd_status(args) -> int:
    from asiarch.analysis.views import load_budget, open_readonly, status_text
    from asiarch.cli.color import emit, palette_for
    from asiarch.layout import ExperimentDir

    exp = ExperimentDir(Path(args.dir))
    with open_readonly(exp) as store:
        emit(status_text(store, load_budget(exp), palette_for(sys.stdout), exp))
    return 0


def status_parser(sub) -> None:
    s = sub.add_parser("status", help="where a run stands (read-only)")
    s.add_argument("dir")
    s.set_defaults(func=cmd_status)


# ---------------------------------------------------------------------- asiarch leaderboard DIR


def cmd_leaderboard(args) -> int:
    from asiarch.analysis.views import (leaderboard_rows, load_reference, open_readonly, render_leaderboard,
                                        render_stage_leaderboard, stage_leaderboard_rows)
    from asiarch.cli.color import emit, palette_for
    from asiarch.layout import ExperimentDir

    exp = ExperimentDir(Path(args.dir))
    with open_readonly(exp) as store:
        fmt = "json" if args.json else "csv" if args.csv else "table"
        if args.stage:  # per-stage figures: seed means with intervals, paired gains against the reference
            reference, fitness_cfg = load_reference(exp)
            emit(render_stage_leaderboard(stage_leaderboard_rows(store, args.stage, reference, fitness_cfg), fmt,
                                          args.limit, palette_for(sys.stdout), reference=reference,
                                          stage=args.stage))
        else:
            emit(render_leaderboard(leaderboard_rows(store), fmt, args.limit, palette_for(sys.stdout)))
    return 0


def leaderboard_parser(sub) -> None:
    s = sub.add_parser("leaderboard", help="candidates ranked by fitness (read-only)")
    s.add_argument("dir")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--csv", action="store_true")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--stage", default=None,
                   help="the per-stage table of a stage (explore or verify): seed means with 95%% intervals "
                        "and paired gains against the reference baseline")
    s.set_defaults(func=cmd_leaderboard)


# ---------------------------------------------------------------------- asiarch show DIR CANDIDATE


def cmd_show(args) -> int:
    from asiarch.analysis.show import show_text
    from asiarch.analysis.views import open_readonly
    from asiarch.cli.color import emit, palette_for
    from asiarch.layout import ExperimentDir

    exp = ExperimentDir(Path(args.dir))
    with open_readonly(exp) as store:
        emit(show_text(store, exp, args.candidate, palette_for(sys.stdout), code=not args.no_code))
    return 0


def show_parser(sub) -> None:
    s = sub.add_parser("show", help="one candidate in full: motivation, analysis, attempts, curve, code (read-only)")
    s.add_argument("dir")
    s.add_argument("candidate", help="id or name")
    s.add_argument("--no-code", action="store_true", help="leave out the code")
    s.set_defaults(func=cmd_show)


# ---------------------------------------------------------------------- asiarch diff DIR A [B]


def cmd_diff(args) -> int:
    from asiarch.analysis.show import diff_text
    from asiarch.analysis.views import open_readonly
    from asiarch.cli.color import emit, palette_for
    from asiarch.layout import ExperimentDir

    with open_readonly(ExperimentDir(Path(args.dir))) as store:
        emit(diff_text(store, args.a, args.b, palette_for(sys.stdout), context=args.context))
    return 0


def diff_parser(sub) -> None:
    s = sub.add_parser("diff", help="unified diff of two candidates' code; B defaults to A's parent (read-only)")
    s.add_argument("dir")
    s.add_argument("a", help="id or name")
    s.add_argument("b", nargs="?", default=None, help="id or name (default: A's parent, diffed against A)")
    s.add_argument("--context", type=int, default=3, help="lines of context (default 3)")
    s.set_defaults(func=cmd_diff)


# ---------------------------------------------------------------------- asiarch lineage DIR


def cmd_lineage(args) -> int:
    from asiarch.analysis.lineage import load_lineage, render_lineage
    from asiarch.analysis.plots import PlotError, plot_lineage
    from asiarch.analysis.views import open_readonly
    from asiarch.cli.color import emit, palette_for, unicode_ok
    from asiarch.layout import ExperimentDir

    with open_readonly(ExperimentDir(Path(args.dir))) as store:
        lin = load_lineage(store)
        root = store.find_candidate(args.root).id if args.root else None
    emit(render_lineage(lin, top=args.top, all_nodes=args.all, max_depth=args.depth, root=root,
                        palette=palette_for(sys.stdout), ascii_only=not unicode_ok(sys.stdout)))
    if args.png:
        try:
            plot_lineage(lin, args.png, top=args.top, root=root)
        except PlotError as exc:
            return die(str(exc))
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def lineage_parser(sub) -> None:
    s = sub.add_parser("lineage", help="the family tree: branches to the top candidates (read-only)")
    s.add_argument("dir")
    s.add_argument("--top", type=int, default=10, help="draw the branches to the K best (default 10)")
    s.add_argument("--all", action="store_true", help="every node, not only the branches to the top K")
    s.add_argument("--depth", type=int, default=None, help="fold everything below this depth")
    s.add_argument("--root", default=None, help="only the subtree of this candidate (id or name)")
    s.add_argument("--png", default=None, help="also draw the top-K branches into this PNG file")
    s.set_defaults(func=cmd_lineage)


# ---------------------------------------------------------------------- asiarch report DIR


def cmd_report(args) -> int:
    from asiarch.analysis.plots import PlotError
    from asiarch.analysis.report import write_report
    from asiarch.layout import ExperimentDir

    t0 = time.time()
    try:
        rep = write_report(ExperimentDir(Path(args.dir)), args.out, top=args.top, lineage_top=args.lineage_top,
                           plots=not args.no_plots)
    except PlotError as exc:
        return die(str(exc))
    print(f"wrote {rep.html}" + (f" and {len(rep.pngs)} plots beside it" if rep.pngs else "")
          + f" in {time.time() - t0:.1f} s")
    return 0


def report_parser(sub) -> None:
    s = sub.add_parser("report", help="write DIR/reports/report.html and PNG plots (reads the store only)")
    s.add_argument("dir")
    s.add_argument("--out", default=None, help="write into this directory instead of DIR/reports")
    s.add_argument("--top", type=int, default=5, help="candidates in the curves, tasks and details (default 5)")
    s.add_argument("--lineage-top", type=int, default=10, help="branches in the lineage picture (default 10)")
    s.add_argument("--no-plots", action="store_true", help="the HTML without plots (no matplotlib needed)")
    s.set_defaults(func=cmd_report)


# ---------------------------------------------------------------------- asiarch export DIR


def cmd_export(args) -> int:
    from asiarch.analysis.export import export_rows, write_rows
    from asiarch.analysis.views import load_reference, open_readonly
    from asiarch.layout import ExperimentDir

    exp = ExperimentDir(Path(args.dir))
    with open_readonly(exp) as store:
        rows = export_rows(store, stage=args.stage, code=args.code, reference=load_reference(exp)[0])
    if not args.out or args.out == "-":
        write_rows(rows, args.format, sys.stdout)
        return 0
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        n = write_rows(rows, args.format, fh)
    print(f"wrote {n} rows to {args.out}", file=sys.stderr)
    return 0


def export_parser(sub) -> None:
    s = sub.add_parser("export", help="one row per candidate as CSV or JSON lines, for pandas (read-only)")
    s.add_argument("dir")
    s.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    s.add_argument("--out", default=None, help="file to write (default: stdout)")
    s.add_argument("--stage", default=None, help="only the candidates trained in this stage (explore or verify), "
                                                 "with the stage's seed means, intervals and paired gains")
    s.add_argument("--code", action="store_true", help="include each candidate's code")
    s.set_defaults(func=cmd_export)


def register(sub) -> None:
    """Add the parsers of the read-only commands, in the order of `asiarch --help`."""
    for parser in (status_parser, leaderboard_parser, show_parser, diff_parser, lineage_parser, report_parser,
                   export_parser):
        parser(sub)
