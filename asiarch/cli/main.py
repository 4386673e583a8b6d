"""The asiarch command line.

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
    asiarch check LAYER.py [--json]    pre-flight checks of one layer
    asiarch train LAYER.py --out RESULT.h5 [--task mqar] [--steps N] [--nproc 2]
    asiarch bench overhead             the head's own cost per candidate with 1,000 in the store
    asiarch bench kernels [--mixers M ...] [--seq-lens T ...]   fwd+bwd tokens/s of the token mixers
    asiarch bench kill-head [--candidates 20] [--kills 10]     SIGKILL the head at random; count what was lost
    asiarch import-asi-arch ARCHITECTURES.json --into DIR [--tree TREE.json] [--top K | --names A,B]
    asiarch knowledge import COGNITION_DIR DIR   ASI-Arch's cognition/ papers into DIR's knowledge base
"""

from __future__ import annotations

import argparse
import signal
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
    from asiarch.cli.console import Console
    from asiarch.layout import ExperimentDir
    from asiarch.search.loop import Search, SearchError

    exp = ExperimentDir(root)
    console = Console(verbose=not quiet)
    resumed = exp.exists()
    console.line(f"{'resuming' if resumed else 'starting'} experiment {cfg.experiment.name!r} in {root} "
                 f"({cfg.budget.candidates} candidates, scheduler {cfg.cluster.scheduler}, "
                 f"proposer {cfg.search.proposer})")
    search = Search(exp, cfg, console=console)

    def stop(signum, _frame):  # sbatch's time-limit warning, scancel, or the head script's requeue
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
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


def demo_setup(args):
    """The demo's config: DIR/config.toml when it exists (a resumed demo), else the demo defaults;
    --llm-url (and --llm-model) switch either to the LLM agents. Writes DIR/config.toml."""
    import shutil

    from asiarch.config import demo_config, load_config, render_toml, validate

    root = Path(args.dir)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    if (root / "config.toml").exists():
        cfg = load_config(root / "config.toml")
    else:
        cfg = demo_config(name="demo")
        if args.candidates is not None:
            cfg.budget.candidates = args.candidates
        if args.scheduler == "slurm":
            cfg.cluster.scheduler = "slurm"
            cfg.cluster.max_in_flight = 2  # the array throttle %K
        if args.stages:  # both stages, 3 seeds each: what a reviewer would ask for, in small
            cfg.train.seeds, cfg.train.nproc, cfg.cluster.max_in_flight = 3, 1, 2
            cfg.train.mqar_eval = ["8x128"]
            cfg.baselines.names = ["deltanet"]
            cfg.baselines.reference = "deltanet"
            cfg.budget.candidates = args.candidates if args.candidates is not None else 4
            v = cfg.verify
            v.enabled, v.promote, v.top_k, v.seeds, v.hidden_size, v.steps = True, "top_k", 3, 3, 96, 400
    if args.llm_url:
        cfg.llm.base_url = args.llm_url
        cfg.search.proposer = "llm"
        cfg.experiment.description = "asiarch demo: the whole loop on one machine, CPU, LLM agents."
    if args.llm_model:
        cfg.llm.model = args.llm_model
    validate(cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(render_toml(cfg))
    return root, cfg


def cmd_demo(args) -> int:
    import os

    from asiarch.layout import ExperimentDir
    from asiarch.analysis.views import (leaderboard_rows, load_reference, open_readonly, render_leaderboard,
                               render_stage_leaderboard, stage_leaderboard_rows)

    root, cfg = demo_setup(args)
    if cfg.search.proposer != "offline":
        env = cfg.llm.api_key_env
        print(f"LLM agents: {cfg.llm.model} at {cfg.llm.base_url}; API key from ${env}"
              + ("" if os.environ.get(env) else " (not set: a placeholder is sent, which local servers accept)"))
    code = _run_search(root, cfg, quiet=args.quiet)
    exp = ExperimentDir(root)
    with open_readonly(exp) as store:
        print()
        if cfg.verify.enabled:
            reference, fitness_cfg = load_reference(exp)
            for stage in ("explore", "verify"):
                print(f"stage {stage}:")
                print(render_stage_leaderboard(stage_leaderboard_rows(store, stage, reference, fitness_cfg),
                                               reference=reference, stage=stage))
                print()
        else:
            print(render_leaderboard(leaderboard_rows(store)))
    print(f"\nNext: `asiarch status {root}`, `asiarch leaderboard {root} --json`, `asiarch report {root}`")
    return code


def cmd_add(args) -> int:
    """Add a layer by hand: checked and trained by the next `asiarch run`, then a possible parent."""
    from asiarch.propose.genome import genome_from_code
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
    with Store.open(exp.db) as store:
        sha = code_sha256(code)
        shas, _ = store.known_keys()
        if sha in shas:
            return _die(f"{layer}: this exact code is already in the experiment")
        genome = genome_from_code(code)
        cid = store.add_candidate(name=args.name or layer.stem, origin="manual", code=code, code_sha256=sha,
                                  motivation=args.motivation, genome_key=genome.key() if genome else "")
    print(f"added #{cid} {args.name or layer.stem}; `asiarch run {exp.root}` checks and trains it")
    return 0


def cmd_render(args) -> int:
    """Print what a round would submit: the scheduler's wrapper and one attempt's job script."""
    from asiarch.dispatch.attempt import write_attempt_files
    from asiarch.layout import AttemptPaths, ExperimentDir, run_key
    from asiarch.search.loop import make_scheduler

    root = Path(args.dir)
    cfg = _load(root, args.config)
    exp = ExperimentDir(root)
    with tempfile.TemporaryDirectory(prefix="asiarch-render-") as tmp:
        work = Path(tmp) / "candidates" / "00000-next" / "attempt-1"
        paths = AttemptPaths(dir=work, job_script=work / "job.sh", spec=work / "spec.json",
                             result=work / "result.h5", progress=work / "progress.json", log=work / "job.log")
        layer = work.parent / "layer.py"
        key = run_key(cfg.experiment.name, 0, 1)
        req = write_attempt_files(paths, layer_path=layer, identity={"experiment": cfg.experiment.name,
                                  "candidate_id": 0, "attempt": 1, "run_key": key, "code_sha256": "-"},
                                  train=cfg.train, cluster=cfg.cluster, class_name=cfg.search.class_name,
                                  python=cfg.cluster.python or sys.executable, bind_root=exp.root.resolve())
        sched = make_scheduler(exp, cfg, check=False)
        if hasattr(sched, "render_sbatch"):
            print(f"# --- the sbatch script of a round of {cfg.search.round_size} (one array job) ---")
            print(sched.render_sbatch(cfg.search.round_size))
        else:
            print(f"# --- scheduler {sched.name}: each attempt's job.sh runs in a submitit local job, "
                  f"{cfg.cluster.max_in_flight} at a time ---")
        print("# --- job.sh of one attempt (paths shown for a placeholder candidate 00000-next) ---")
        print(req.script.read_text().replace(str(Path(tmp)), str(exp.root.resolve())))
    return 0


def cmd_head_script(args) -> int:
    """Print the sbatch script that runs this experiment's head as a self-requeueing Slurm job."""
    from asiarch.dispatch.render import render_head_script

    root = Path(args.dir).resolve()
    cfg = _load(root, None)
    c = cfg.cluster
    print(render_head_script(name=cfg.experiment.name, experiment_dir=str(root),
                             asiarch=(sys.executable, "-m", "asiarch"), time_min=args.time_min,
                             partition=args.partition or c.partition, account=c.account, qos=c.qos,
                             modules=tuple(c.modules)), end="")
    return 0


def cmd_container(args) -> int:
    from asiarch.dispatch.container import main as container_main

    return container_main(args.action, args.image, definition=args.definition, force=args.force,
                          python=args.python, nv=args.nv)


def cmd_status(args) -> int:
    from asiarch.cli.color import Palette, emit
    from asiarch.layout import ExperimentDir
    from asiarch.analysis.views import load_budget, open_readonly, status_text

    exp = ExperimentDir(Path(args.dir))
    with open_readonly(exp) as store:
        emit(status_text(store, load_budget(exp), Palette.for_stream(sys.stdout), exp))
    return 0


def cmd_leaderboard(args) -> int:
    from asiarch.cli.color import Palette, emit
    from asiarch.layout import ExperimentDir
    from asiarch.analysis.views import (leaderboard_rows, load_reference, open_readonly, render_leaderboard,
                               render_stage_leaderboard, stage_leaderboard_rows)

    exp = ExperimentDir(Path(args.dir))
    with open_readonly(exp) as store:
        fmt = "json" if args.json else "csv" if args.csv else "table"
        if args.stage:  # per-stage figures: seed means with intervals, paired gains against the reference
            reference, fitness_cfg = load_reference(exp)
            emit(render_stage_leaderboard(stage_leaderboard_rows(store, args.stage, reference, fitness_cfg), fmt,
                                          args.limit, Palette.for_stream(sys.stdout), reference=reference,
                                          stage=args.stage))
        else:
            emit(render_leaderboard(leaderboard_rows(store), fmt, args.limit, Palette.for_stream(sys.stdout)))
    return 0


def cmd_show(args) -> int:
    from asiarch.cli.color import Palette, emit
    from asiarch.layout import ExperimentDir
    from asiarch.analysis.show import show_text
    from asiarch.analysis.views import open_readonly

    exp = ExperimentDir(Path(args.dir))
    with open_readonly(exp) as store:
        emit(show_text(store, exp, args.candidate, Palette.for_stream(sys.stdout), code=not args.no_code))
    return 0


def cmd_diff(args) -> int:
    from asiarch.cli.color import Palette, emit
    from asiarch.layout import ExperimentDir
    from asiarch.analysis.show import diff_text
    from asiarch.analysis.views import open_readonly

    with open_readonly(ExperimentDir(Path(args.dir))) as store:
        emit(diff_text(store, args.a, args.b, Palette.for_stream(sys.stdout), context=args.context))
    return 0


def cmd_lineage(args) -> int:
    from asiarch.cli.color import Palette, emit, unicode_ok
    from asiarch.layout import ExperimentDir
    from asiarch.analysis.lineage import load_lineage, render_lineage
    from asiarch.analysis.plots import PlotError, plot_lineage
    from asiarch.analysis.views import open_readonly

    with open_readonly(ExperimentDir(Path(args.dir))) as store:
        lin = load_lineage(store)
        root = store.find_candidate(args.root).id if args.root else None
    emit(render_lineage(lin, top=args.top, all_nodes=args.all, max_depth=args.depth, root=root,
                        palette=Palette.for_stream(sys.stdout), ascii_only=not unicode_ok(sys.stdout)))
    if args.png:
        try:
            plot_lineage(lin, args.png, top=args.top, root=root)
        except PlotError as exc:
            return _die(str(exc))
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from asiarch.layout import ExperimentDir
    from asiarch.analysis.plots import PlotError
    from asiarch.analysis.report import write_report

    t0 = time.time()
    try:
        rep = write_report(ExperimentDir(Path(args.dir)), args.out, top=args.top, lineage_top=args.lineage_top,
                           plots=not args.no_plots)
    except PlotError as exc:
        return _die(str(exc))
    print(f"wrote {rep.html}" + (f" and {len(rep.pngs)} plots beside it" if rep.pngs else "")
          + f" in {time.time() - t0:.1f} s")
    return 0


def cmd_export(args) -> int:
    from asiarch.analysis.export import export_rows, write_rows
    from asiarch.layout import ExperimentDir
    from asiarch.analysis.views import load_reference, open_readonly

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


def cmd_check(args) -> int:
    from asiarch.search.preflight import check_command

    return check_command(args.layer, as_json=args.json, class_name=args.class_name,
                         hidden_size=args.hidden_size, num_heads=args.num_heads)


def cmd_train(args) -> int:
    """Train one layer through the loop's own job path (spec, rendered script, torchrun, result file)."""
    from asiarch.dispatch.attempt import write_attempt_files
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
    for key in ("hidden_size", "num_layers", "num_heads", "seq_len", "batch_size", "lr", "precision"):
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
    from asiarch.tools.bench import bench_overhead

    if args.what == "overhead":
        return bench_overhead(candidates=args.candidates, rounds=args.rounds)
    if args.what == "slurm":
        from asiarch.tools.bench import bench_slurm

        return bench_slurm(candidates=args.candidates if args.candidates != 1000 else 64)
    if args.what == "kernels":
        from asiarch.job.ops.bench import main as bench_kernels

        return bench_kernels(args.kernel_args, prog="asiarch bench kernels") or 0
    if args.what == "kill-head":
        import json
        import tempfile

        from asiarch.tools.kill_head import format_stress, kill_head_stress

        root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="asiarch-stress-")) / "exp"
        if root.exists():
            return _die(f"{root} exists; name a new directory (the stress run creates it)")
        out = kill_head_stress(root, candidates=args.candidates, kills=args.kills, seed=args.seed)
        print(format_stress(out))
        print(f"experiment kept in {root} (heads' output in heads.log)")
        if args.json:
            print(json.dumps(out, indent=1))
        return 0 if (out["lost"], out["trained_twice"], out["over_budget"]) == (0, 0, 0) else 1
    return _die(f"unknown benchmark {args.what!r}")


def cmd_knowledge_import(args) -> int:
    """Import ASI-Arch's cognition files into an experiment's knowledge base (the Researcher reads it)."""
    from asiarch.layout import ExperimentDir
    from asiarch.propose.llm.knowledge import cognition_entries, import_cognition
    from asiarch.store import Store

    exp = ExperimentDir(Path(args.dir))
    if not (exp.config.exists() or exp.exists()):
        return _die(f"{exp.root} is not an experiment directory; create one with `asiarch init {exp.root}`")
    try:
        cognition_entries(args.cognition)  # read and parse everything before writing anything
    except ValueError as exc:
        return _die(str(exc))
    with Store.open(exp.db) as store:
        entries = import_cognition(args.cognition, store)
    papers = len({e.key.split("#")[0] for e in entries})
    print(f"imported {len(entries)} insights from {papers} papers in {args.cognition} into {exp.root}'s knowledge "
          "base; the Researcher retrieves from it with the shipped entries")
    return 0


def cmd_import_asi_arch(args) -> int:
    """Import ASI-Arch's published layers as proposed candidates (checked and trained by the next run)."""
    from asiarch.tools.asi_arch import AsiArchError, import_command

    names = [n.strip() for part in args.names or () for n in part.split(",") if n.strip()]
    try:
        return import_command(args.architectures, args.into, tree=args.tree, top=args.top, names=names or None,
                              cognition=args.cognition)
    except AsiArchError as exc:
        return _die(str(exc))


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
    s.add_argument("--scheduler", choices=("local", "slurm"), default=None,
                   help="local (default) or slurm: the cluster SLURM_CONF points at (on this machine: "
                        "eval \"$(slurm/start-test-cluster.sh)\")")
    s.add_argument("--llm-url", default=None, metavar="URL",
                   help="an OpenAI-compatible endpoint (e.g. http://localhost:8000/v1): the LLM agents propose, "
                        "repair and analyse; the key is read from $OPENAI_API_KEY (llm.api_key_env)")
    s.add_argument("--llm-model", default=None, metavar="NAME", help="the model every agent uses (llm.model)")
    s.add_argument("--stages", action="store_true",
                   help="exploration and verification stages with 3 seeds each, intervals and paired gains "
                        "(about 5-6 minutes on 2 cores)")
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

    s = sub.add_parser("render", help="print the scripts a round would submit")
    s.add_argument("dir")
    s.add_argument("--config", help="config file (default: DIR/config.toml)")
    s.add_argument("--dry-run", action="store_true", help="(always) print, submit nothing")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("head-script", help="print an sbatch script that runs the head as a self-requeueing job")
    s.add_argument("dir")
    s.add_argument("--time-min", type=int, default=24 * 60, help="the head job's time limit (minutes)")
    s.add_argument("--partition", default="", help="partition for the head (default: the experiment's)")
    s.set_defaults(func=cmd_head_script)

    s = sub.add_parser("container", help="build or check the Apptainer job image (through spython)")
    s.add_argument("action", choices=("build", "check"))
    s.add_argument("image", nargs="?", default=None, help="the .sif to build or check (default: asiarch.sif)")
    s.add_argument("--definition", default=None, help="definition file (default: containers/asiarch.def)")
    s.add_argument("--force", action="store_true", help="build: overwrite an existing image")
    s.add_argument("--python", default="python3", help="check: the interpreter inside the image")
    s.add_argument("--nv", action="store_true", help="check: with the host's GPUs (--nv)")
    s.set_defaults(func=cmd_container)

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
    s.add_argument("--stage", default=None,
                   help="the per-stage table of a stage (explore or verify): seed means with 95%% intervals "
                        "and paired gains against the reference baseline")
    s.set_defaults(func=cmd_leaderboard)

    s = sub.add_parser("show", help="one candidate in full: motivation, analysis, attempts, curve, code (read-only)")
    s.add_argument("dir")
    s.add_argument("candidate", help="id or name")
    s.add_argument("--no-code", action="store_true", help="leave out the code")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("diff", help="unified diff of two candidates' code; B defaults to A's parent (read-only)")
    s.add_argument("dir")
    s.add_argument("a", help="id or name")
    s.add_argument("b", nargs="?", default=None, help="id or name (default: A's parent, diffed against A)")
    s.add_argument("--context", type=int, default=3, help="lines of context (default 3)")
    s.set_defaults(func=cmd_diff)

    s = sub.add_parser("lineage", help="the family tree: branches to the top candidates (read-only)")
    s.add_argument("dir")
    s.add_argument("--top", type=int, default=10, help="draw the branches to the K best (default 10)")
    s.add_argument("--all", action="store_true", help="every node, not only the branches to the top K")
    s.add_argument("--depth", type=int, default=None, help="fold everything below this depth")
    s.add_argument("--root", default=None, help="only the subtree of this candidate (id or name)")
    s.add_argument("--png", default=None, help="also draw the top-K branches into this PNG file")
    s.set_defaults(func=cmd_lineage)

    s = sub.add_parser("report", help="write DIR/reports/report.html and PNG plots (reads the store only)")
    s.add_argument("dir")
    s.add_argument("--out", default=None, help="write into this directory instead of DIR/reports")
    s.add_argument("--top", type=int, default=5, help="candidates in the curves, tasks and details (default 5)")
    s.add_argument("--lineage-top", type=int, default=10, help="branches in the lineage picture (default 10)")
    s.add_argument("--no-plots", action="store_true", help="the HTML without plots (no matplotlib needed)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("export", help="one row per candidate as CSV or JSON lines, for pandas (read-only)")
    s.add_argument("dir")
    s.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    s.add_argument("--out", default=None, help="file to write (default: stdout)")
    s.add_argument("--stage", default=None, help="only the candidates trained in this stage (explore or verify), "
                                                 "with the stage's seed means, intervals and paired gains")
    s.add_argument("--code", action="store_true", help="include each candidate's code")
    s.set_defaults(func=cmd_export)

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
    s.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="bf16: autocast, as ASI-Arch trained (layers that cast to bf16 inside need it; works on CPU)")
    for key, tp in (("hidden_size", int), ("num_layers", int), ("num_heads", int), ("seq_len", int),
                    ("batch_size", int), ("lr", float)):
        s.add_argument("--" + key.replace("_", "-"), dest=key, type=tp, default=None)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("import-asi-arch", help="import ASI-Arch's published layers into an experiment")
    s.add_argument("architectures", help="ASI-Arch's architectures.json (a list of layers with code and results)")
    s.add_argument("--into", required=True, metavar="DIR", help="experiment directory (created with defaults "
                                                                "and bf16 precision if it has no config.toml)")
    s.add_argument("--tree", help="ASI-Arch's tree.json: records each layer's ancestry beyond its parent")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--top", type=int, help="import only the K best by ASI-Arch's reported fitness")
    g.add_argument("--names", action="append", metavar="A,B", help="import only these layers (names or display "
                                                                   "names, comma-separated; repeatable)")
    s.add_argument("--cognition", metavar="DIR", help="ASI-Arch's cognition/ papers, into the experiment's knowledge "
                                                      "base (as `asiarch knowledge import`)")
    s.set_defaults(func=cmd_import_asi_arch)

    s = sub.add_parser("knowledge", help="the knowledge base the Researcher reads")
    ks = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = ks.add_parser("import", help="import ASI-Arch's cognition/ papers (JSON insights) into DIR's knowledge base")
    k.add_argument("cognition", metavar="COGNITION_DIR", help="ASI-Arch's cognition/ folder (one JSON file per paper)")
    k.add_argument("dir", metavar="DIR", help="experiment directory")
    k.set_defaults(func=cmd_knowledge_import)

    s = sub.add_parser("bench", help="benchmarks that print figures")
    bs = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    for what, about in (("overhead", "the head's own cost per candidate"),
                        ("slurm", "controller RPCs per candidate on the Slurm at SLURM_CONF")):
        b = bs.add_parser(what, help=about)
        b.add_argument("--candidates", type=int, default=1000, help="candidates in the store (overhead)")
        b.add_argument("--rounds", type=int, default=5, help="rounds of 4 candidates measured (overhead)")
        b.set_defaults(func=cmd_bench)
    b = bs.add_parser("kill-head", help="SIGKILL the head of a real search at random moments; count lost and "
                                        "duplicated candidates")
    b.add_argument("--candidates", type=int, default=20, help="the search's budget")
    b.add_argument("--kills", type=int, default=10, help="how many times the head is killed")
    b.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    b.add_argument("--dir", default=None, help="experiment directory to create (default: a temporary one)")
    b.add_argument("--json", action="store_true", help="also print the audit as JSON")
    b.set_defaults(func=cmd_bench)
    # every argument, --help included, goes on to asiarch.job.ops.bench (which imports torch):
    # with '+' as its only prefix this parser takes '--seq-lens ...' as plain words
    b = bs.add_parser("kernels", prefix_chars="+", add_help=False,
                      help="fwd+bwd tokens/s of the token mixers, chunked vs recurrent vs softmax "
                           "(options: asiarch bench kernels --help)")
    b.add_argument("kernel_args", nargs="*")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from asiarch.config import ConfigError
    from asiarch.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, StoreError, FileNotFoundError) as exc:
        return _die(str(exc))
