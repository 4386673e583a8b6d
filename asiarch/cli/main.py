"""The asiarch command line: this module only parses and runs; each command's parser stands
beside its handler in the module of its concern.

    asiarch demo [DIR]                 the whole loop on this machine (CPU, no cluster, no API key)
    asiarch demo [DIR] --llm-url URL [--llm-model NAME]   the same with the LLM agents proposing
    asiarch init DIR                   write a commented config.toml to start an experiment from
    asiarch run DIR                    run (or resume) the experiment in DIR
    asiarch render DIR --dry-run       print the sbatch and job scripts a round would submit
    asiarch head-script DIR            an sbatch script running the head as a self-requeueing job
    asiarch container build|check [IMAGE]   the Apptainer job image, through spython (fakeroot)
    asiarch add DIR LAYER.py           add a layer by hand (checked and trained by the next run)
    asiarch status DIR                 where a run stands (read-only; safe while the head runs)
    asiarch leaderboard DIR [--json|--csv] [--limit N] [--stage S]
    asiarch show DIR CANDIDATE         one candidate in full (id or name)
    asiarch diff DIR A [B]             code diff of two candidates (B: A's parent)
    asiarch lineage DIR [--png FILE]   the family tree (branches to the top 10; --all)
    asiarch report DIR                 DIR/reports/report.html and PNG plots
    asiarch export DIR --format csv|jsonl [--out FILE]
    asiarch check LAYER.py [--config DIR/config.toml] [--seq-len N] [--precision bf16] [--json]
                                       pre-flight checks of one layer, at the training settings
    asiarch train LAYER.py --out RESULT.h5 [--task mqar|lm] [--data DIR] [--steps N] [--nproc 2]
    asiarch data prepare INPUT... --tokenizer gpt2|bytes|TOKENIZER.json --out DIR [--val-tokens N] [--workers N]
    asiarch data verify DIR            check a prepared directory's shards (sizes, sha256)
    asiarch bench overhead             the head's own cost per candidate with 1,000 in the store
    asiarch bench slurm [--candidates 64]   controller RPCs per candidate on the Slurm at SLURM_CONF
    asiarch bench kernels [--mixers M ...] [--seq-lens T ...]   fwd+bwd tokens/s of the token mixers
    asiarch bench kill-head [--candidates 20] [--kills 10]     SIGKILL the head at random; count what was lost
    asiarch bench preflight [--sample 10] [--all]           pre-flight seconds per layer, as the loop runs it
    asiarch import-asi-arch ARCHITECTURES.json --into DIR [--tree TREE.json] [--top K | --names A,B]
    asiarch knowledge import COGNITION_DIR DIR   ASI-Arch's cognition/ papers into DIR's knowledge base

    asiarch.cli.experiment   demo, init, run, render, head-script, add
    asiarch.cli.container    container
    asiarch.cli.analysis     status, leaderboard, show, diff, lineage, report, export (read-only)
    asiarch.cli.check        check, train (one layer file)
    asiarch.cli.data         data prepare, data verify (token shards)
    asiarch.cli.importers    import-asi-arch, knowledge import
    asiarch.cli.bench        bench overhead | slurm | kill-head | kernels
    asiarch.cli.common       die(), an experiment's config, the experiment check
"""

from __future__ import annotations

import argparse

from asiarch.cli import analysis, bench, check, container, data, experiment, importers
from asiarch.cli.common import die
from asiarch.cli.experiment import demo_setup

__all__ = ["build_parser", "demo_setup", "main"]  # demo_setup: the demo's config, as `asiarch demo` builds it


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command module adds its parsers, in the order of `asiarch --help`."""
    from asiarch import __version__

    p = argparse.ArgumentParser(prog="asiarch", description="Autonomous neural-architecture discovery on Slurm.")
    p.add_argument("--version", action="version", version=f"asiarch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    experiment.register(sub, "demo", "init", "run", "render", "head-script")
    container.register(sub)
    experiment.register(sub, "add")
    analysis.register(sub)
    check.register(sub)
    data.register(sub)
    importers.register(sub)
    bench.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run the command; its exit code. A bad config, a store
    that cannot be opened, data a job's sandbox would not hold or a missing file is one line on stderr and
    exit code 2."""
    from asiarch.config import ConfigError
    from asiarch.dispatch.sandbox import SandboxUnavailable
    from asiarch.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, StoreError, SandboxUnavailable, FileNotFoundError) as exc:
        return die(str(exc))
