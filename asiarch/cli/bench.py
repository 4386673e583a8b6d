"""`asiarch bench overhead | slurm | kill-head | kernels`: benchmarks that print figures.

The measurements are :mod:`asiarch.tools.bench`, :mod:`asiarch.tools.kill_head` and
:mod:`asiarch.job.ops.bench`; each subcommand's parser is built right below its handler.
"""

from __future__ import annotations

import argparse
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
    out = kill_head_stress(root, candidates=args.candidates, kills=args.kills, seed=args.seed)
    print(format_stress(out))
    print(f"experiment kept in {root} (heads' output in heads.log)")
    if args.json:
        print(json.dumps(out, indent=1))
    return 0 if (out["lost"], out["trained_twice"], out["over_budget"]) == (0, 0, 0) else 1


def kill_head_parser(bs) -> None:
    b = bs.add_parser("kill-head", help="SIGKILL the head of a real search at random moments; count lost and "
                                        "duplicated candidates")
    b.add_argument("--candidates", type=int, default=20, help="the search's budget")
    b.add_argument("--kills", type=int, default=10, help="how many times the head is killed")
    b.add_argument("--seed", type=int, default=0, help="seed of the kill times")
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


def register(sub) -> None:
    """Add `asiarch bench` and its subcommands, in the order of `asiarch bench --help`."""
    s = sub.add_parser("bench", help="benchmarks that print figures")
    bs = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    for parser in (overhead_parser, slurm_parser, kill_head_parser, kernels_parser, preflight_parser):
        parser(bs)
