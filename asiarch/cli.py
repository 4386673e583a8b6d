"""The asiarch command line.

    asiarch demo [DIR]                 the whole loop on this machine (CPU, no cluster, no API key)
    asiarch init DIR                   write a commented config.toml to start an experiment from
    asiarch run DIR                    run (or resume) the experiment in DIR
    asiarch add DIR LAYER.py           add a layer by hand (checked and trained by the next run)
    asiarch status DIR                 where a run stands (read-only; safe while the head runs)
    asiarch leaderboard DIR [--json|--csv]
    asiarch check LAYER.py [--json]    pre-flight checks of one layer
    asiarch train LAYER.py --out RESULT.h5 [--task mqar] [--steps N] [--nproc 2]
    asiarch bench overhead             the head's own cost per candidate with 1,000 in the store
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _die(msg: str, code: int = 2) -> int:
    print(f"asiarch: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------- commands


def cmd_init(args) -> int:
    from asiarch.config import Config, render_toml

    root = Path(args.dir)
    path = root / "config.toml"
    if path.exists() and not args.force:
        return _die(f"{path} exists; pass --force to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.experiment.name = root.resolve().name.replace(" ", "_") or "asiarch"
    path.write_text(render_toml(cfg))
    print(f"wrote {path}; edit it, then `asiarch run {root}`")
    return 0


def _load(root: Path, config: str | None):
    from asiarch.config import load_config

    path = Path(config) if config else root / "config.toml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config; create one with `asiarch init {root}`")
    return load_config(path)


def _run_search(root: Path, cfg, *, quiet: bool = False) -> int:
    from asiarch.console import Console
    from asiarch.layout import ExperimentDir
    from asiarch.loop import Search, SearchError

    exp = ExperimentDir(root)
    console = Console(verbose=not quiet)
    resumed = exp.exists()
    console.line(f"{'resuming' if resumed else 'starting'} experiment {cfg.experiment.name!r} in {root} "
                 f"({cfg.budget.candidates} candidates, scheduler {cfg.cluster.scheduler}, "
                 f"proposer {cfg.search.proposer})")
    search = Search(exp, cfg, console=console)
    try:
        summary = search.run()
    except SearchError as exc:
        console.line(f"stopped: {exc}")
        return 1
    except KeyboardInterrupt:
        console.line("interrupted: everything recorded so far is kept; `asiarch run DIR` resumes")
        return 130
    finally:
        search.close()
    best = summary.best
    console.line(f"done in {summary.elapsed_s:.0f} s: {summary.trained} trained, {summary.failed} failed, "
                 f"{summary.rejected} rejected" + (f"; best #{best.id} {best.name} fitness {best.fitness:.3f}"
                                                  if best else ""))
    return 0


def cmd_run(args) -> int:
    root = Path(args.dir)
    cfg = _load(root, args.config)
    return _run_search(root, cfg, quiet=args.quiet)


def cmd_demo(args) -> int:
    import shutil

    from asiarch.config import demo_config, load_config, render_toml
    from asiarch.views import leaderboard_rows, open_readonly, render_leaderboard
    from asiarch.layout import ExperimentDir

    root = Path(args.dir)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    if (root / "config.toml").exists():
        cfg = load_config(root / "config.toml")
    else:
        cfg = demo_config(name="demo")
        if args.candidates is not None:
            cfg.budget.candidates = args.candidates
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.toml").write_text(render_toml(cfg))
    code = _run_search(root, cfg, quiet=args.quiet)
    store = open_readonly(ExperimentDir(root))
    try:
        print()
        print(render_leaderboard(leaderboard_rows(store)))
    finally:
        store.close()
    print(f"\nNext: `asiarch status {root}`, `asiarch leaderboard {root} --json`")
    return code


def cmd_add(args) -> int:
    """Add a layer by hand: checked and trained by the next `asiarch run`, then a possible parent."""
    from asiarch.genome import genome_from_code
    from asiarch.job.candidate import code_sha256
    from asiarch.layout import ExperimentDir
    from asiarch.store import Store

    exp = ExperimentDir(Path(args.dir))
    if not (exp.config.exists() or exp.exists()):
        return _die(f"{exp.root} is not an experiment directory; create one with `asiarch init {exp.root}`")
    layer = Path(args.layer)
    try:
        code = layer.read_text()
    except OSError as exc:
        return _die(f"{layer}: {exc.strerror}")
    store = Store.open(exp.db)
    try:
        sha = code_sha256(code)
        shas, _ = store.known_keys()
        if sha in shas:
            return _die(f"{layer}: this exact code is already in the experiment")
        genome = genome_from_code(code)
        cid = store.add_candidate(name=args.name or layer.stem, origin="manual", code=code, code_sha256=sha,
                                  motivation=args.motivation, genome_key=genome.key() if genome else "")
    finally:
        store.close()
    print(f"added #{cid} {args.name or layer.stem}; `asiarch run {exp.root}` checks and trains it")
    return 0


def cmd_status(args) -> int:
    from asiarch.layout import ExperimentDir
    from asiarch.views import open_readonly, status_text

    exp = ExperimentDir(Path(args.dir))
    store = open_readonly(exp)
    budget = None
    try:
        budget = _load(exp.root, None).budget.candidates
    except Exception:
        pass
    try:
        print(status_text(store, budget))
    finally:
        store.close()
    return 0


def cmd_leaderboard(args) -> int:
    from asiarch.layout import ExperimentDir
    from asiarch.views import leaderboard_rows, open_readonly, render_leaderboard

    store = open_readonly(ExperimentDir(Path(args.dir)))
    try:
        fmt = "json" if args.json else "csv" if args.csv else "table"
        print(render_leaderboard(leaderboard_rows(store), fmt, args.limit))
    finally:
        store.close()
    return 0


def cmd_check(args) -> int:
    from asiarch.checks import check_command

    return check_command(args.layer, as_json=args.json, class_name=args.class_name,
                         hidden_size=args.hidden_size, num_heads=args.num_heads)


def cmd_train(args) -> int:
    """Train one layer through the loop's own job path (spec, rendered script, torchrun, result file)."""
    from asiarch.attempt import write_attempt_files
    from asiarch.config import Config, ConfigError, validate
    from asiarch.dispatch.payload import JobScriptFailed, run_job_script
    from asiarch.job import result as rf
    from asiarch.job.candidate import code_sha256
    from asiarch.layout import AttemptPaths

    layer = Path(args.layer)
    if not layer.exists():
        return _die(f"{layer}: no such layer file")
    cfg = Config()
    t = cfg.train
    t.task, t.steps, t.nproc = args.task, args.steps, args.nproc
    if args.token_file:
        t.token_file = args.token_file
    for key in ("hidden_size", "num_layers", "num_heads", "seq_len", "batch_size", "lr"):
        if getattr(args, key) is not None:
            setattr(t, key, getattr(args, key))
    try:
        validate(cfg)
    except ConfigError as exc:
        return _die(str(exc))
    out = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix="asiarch-train-", dir=out.parent))
    paths = AttemptPaths(dir=work, job_script=work / "job.sh", spec=work / "spec.json", result=out,
                         progress=work / "progress.json", log=work / "job.log")
    source = layer.read_text()
    ident = {"experiment": "manual", "candidate_id": 0, "attempt": 1, "run_key": f"manual-{layer.stem}",
             "code_sha256": code_sha256(source)}
    req = write_attempt_files(paths, layer_path=layer, identity=ident, train=t, cluster=cfg.cluster,
                              class_name=args.class_name, python=sys.executable)
    print(f"training {layer} ({t.task}, {t.steps} steps, {t.nproc} ranks); log: {req.log}")
    t0 = time.time()
    try:
        run_job_script(str(req.script), str(req.log), (cfg.llm.api_key_env,))
    except JobScriptFailed as exc:
        print(f"job failed: {exc}", file=sys.stderr)
    try:
        rec = rf.read_result(out)
    except rf.ResultFileError as exc:
        return _die(str(exc), 1)
    summary = rf.summary(rec)
    print(f"{rec.status}: eval loss {summary.get('eval_loss')}, metrics {rec.metrics}, "
          f"{rec.tokens_per_s:,.0f} tok/s, {time.time() - t0:.1f} s; result: {out}")
    if rec.error:
        print(rec.error, file=sys.stderr)
    return 0 if rec.status == "ok" else 1


def cmd_bench(args) -> int:
    from asiarch.bench import bench_overhead

    if args.what == "overhead":
        return bench_overhead(candidates=args.candidates, rounds=args.rounds)
    if args.what == "kernels":
        from asiarch.job.ops.bench import main as bench_kernels

        return bench_kernels() or 0
    return _die(f"unknown benchmark {args.what!r}")


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from asiarch import __version__

    p = argparse.ArgumentParser(prog="asiarch", description="Autonomous neural-architecture discovery on Slurm.")
    p.add_argument("--version", action="version", version=f"asiarch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="run the whole loop on this machine (CPU, no cluster, no API key)")
    s.add_argument("dir", nargs="?", default="demo-run", help="experiment directory (default: demo-run)")
    s.add_argument("--candidates", type=int, default=None, help="new candidates to train (default 8)")
    s.add_argument("--fresh", action="store_true", help="delete DIR first instead of resuming it")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("init", help="write a commented config.toml into DIR")
    s.add_argument("dir")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("run", help="run or resume the experiment in DIR")
    s.add_argument("dir")
    s.add_argument("--config", help="config file (default: DIR/config.toml)")
    s.add_argument("--resume", action="store_true", help="(default behaviour) resume an existing experiment")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("add", help="add a layer file to an experiment by hand")
    s.add_argument("dir")
    s.add_argument("layer")
    s.add_argument("--name", default=None)
    s.add_argument("--motivation", default="Added by hand.")
    s.set_defaults(func=cmd_add)

    s = sub.add_parser("status", help="where a run stands (read-only)")
    s.add_argument("dir")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("leaderboard", help="candidates ranked by fitness (read-only)")
    s.add_argument("dir")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true")
    g.add_argument("--csv", action="store_true")
    s.add_argument("--limit", type=int, default=None)
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("check", help="pre-flight checks of one layer file")
    s.add_argument("layer")
    s.add_argument("--json", action="store_true")
    s.add_argument("--class-name", default="DeltaNet")
    s.add_argument("--hidden-size", type=int, default=64)
    s.add_argument("--num-heads", type=int, default=4)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("train", help="train one layer through the job path and write its result file")
    s.add_argument("layer")
    s.add_argument("--out", required=True, help="result file to write (HDF5)")
    s.add_argument("--task", default="mqar", choices=("mqar", "lm"))
    s.add_argument("--token-file", default="")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--nproc", type=int, default=2)
    s.add_argument("--class-name", default="DeltaNet")
    for key, tp in (("hidden_size", int), ("num_layers", int), ("num_heads", int), ("seq_len", int),
                    ("batch_size", int), ("lr", float)):
        s.add_argument("--" + key.replace("_", "-"), dest=key, type=tp, default=None)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("bench", help="benchmarks that print figures")
    s.add_argument("what", choices=("overhead", "kernels"))
    s.add_argument("--candidates", type=int, default=1000, help="candidates in the store (overhead)")
    s.add_argument("--rounds", type=int, default=5, help="rounds of 4 candidates measured (overhead)")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from asiarch.config import ConfigError
    from asiarch.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, StoreError, FileNotFoundError) as exc:
        return _die(str(exc))
