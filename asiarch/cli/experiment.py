"""Commands that make and run an experiment: demo, init, run, render, head-script, add.

Each command's parser is built right below its handler; :func:`register` adds them.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

from asiarch.cli.common import die, load_experiment_config, not_an_experiment


def run_search(root: Path, cfg, *, quiet: bool = False) -> int:
    """Open the experiment in ``root`` and run (or resume) its search with a console; the exit code:
    0 done, 1 stopped (the reason printed), 130 interrupted (SIGINT, or SIGTERM from sbatch/scancel)."""
    from asiarch.cli.console import Console
    from asiarch.layout import ExperimentDir
    from asiarch.search.loop import Search, SearchError

    exp = ExperimentDir(root)
    console = Console(verbose=not quiet)
    resumed = exp.exists()
    console.line(f"{'resuming' if resumed else 'starting'} experiment {cfg.experiment.name!r} in {root} "
                 f"({cfg.budget.candidates} candidates, scheduler {cfg.cluster.scheduler}, "
                 f"proposer {cfg.search.proposer})")
    try:
        search = Search.open(exp, cfg, console=console)  # the Slurm check runs here
    except SearchError as exc:
        return die(f"stopped: {exc}", 1)  # shown under --quiet too

    def stop(signum, _frame):  # sbatch's time-limit warning, scancel, or the head script's requeue
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    try:
        summary = search.run()
    except SearchError as exc:
        return die(f"stopped: {exc}", 1)
    except KeyboardInterrupt:
        console.line("interrupted: everything recorded so far is kept; `asiarch run DIR` resumes")
        return 130
    finally:
        search.close()
    best = summary.best
    stopped = f", {summary.stopped} stopped early" if summary.stopped else ""
    console.line(f"done in {summary.elapsed_s:.0f} s: {summary.trained} trained, {summary.failed} failed, "
                 f"{summary.rejected} rejected{stopped}"
                 + (f"; best #{best.id} {best.name} fitness {best.fitness:.3f}" if best else ""))
    return 0


# ---------------------------------------------------------------------- asiarch demo


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
    if getattr(args, "early_stopping", False):  # off in the demo unless asked for
        cfg.early_stopping.enabled = True
    validate(cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(render_toml(cfg))
    return root, cfg


def cmd_demo(args) -> int:
    import os

    from asiarch.analysis.views import (leaderboard_rows, load_reference, open_readonly, render_leaderboard,
                                        render_stage_leaderboard, stage_leaderboard_rows)
    from asiarch.layout import ExperimentDir

    root, cfg = demo_setup(args)
    if cfg.search.proposer != "offline":
        env = cfg.llm.api_key_env
        print(f"LLM agents: {cfg.llm.model} at {cfg.llm.base_url}; API key from ${env}"
              + ("" if os.environ.get(env) else " (not set: a placeholder is sent, which local servers accept)"))
    code = run_search(root, cfg, quiet=args.quiet)
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


def demo_parser(sub) -> None:
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
    s.add_argument("--early-stopping", action="store_true",
                   help="stop candidates behind their peers at rungs (asynchronous successive halving, "
                        "[early_stopping]); off in the demo unless given")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)


# ---------------------------------------------------------------------- asiarch init DIR


def cmd_init(args) -> int:
    from asiarch.config import Config, render_toml

    root = Path(args.dir)
    path = root / "config.toml"
    if path.exists() and not args.force:
        return die(f"{path} exists; pass --force to overwrite it")
    cfg = Config()
    notes = {}
    if args.preset:
        from asiarch.presets import PRESETS, apply

        if args.preset not in PRESETS:
            return die(f"unknown preset {args.preset!r}; presets: "
                       + "; ".join(f"{p.name} ({p.summary})" for p in PRESETS.values()))
        notes = apply(cfg, args.preset)
    root.mkdir(parents=True, exist_ok=True)
    cfg.experiment.name = root.resolve().name.replace(" ", "_") or "asiarch"
    path.write_text(render_toml(cfg, notes=notes))
    if args.preset:
        print(f"wrote {path} (preset {args.preset}); next: {PRESETS[args.preset].next_steps.replace('DIR', str(root))}")
    else:
        print(f"wrote {path}; edit it, then `asiarch run {root}`")
    return 0


def init_parser(sub) -> None:
    s = sub.add_parser("init", help="write a commented config.toml into DIR")
    s.add_argument("dir")
    s.add_argument("--preset", metavar="NAME", help="start from a preset: 'asi-arch' (ASI-Arch's LM setting, for a "
                                                    "GPU cluster) or 'tiny-lm' (the same path at CPU size)")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_init)


# ---------------------------------------------------------------------- asiarch run DIR


def cmd_run(args) -> int:
    root = Path(args.dir)
    cfg = load_experiment_config(root, args.config)
    return run_search(root, cfg, quiet=args.quiet)


def run_parser(sub) -> None:
    s = sub.add_parser("run", help="run or resume the experiment in DIR")
    s.add_argument("dir")
    s.add_argument("--config", help="config file (default: DIR/config.toml)")
    s.add_argument("--resume", action="store_true", help="(default behaviour) resume an existing experiment")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_run)


# ---------------------------------------------------------------------- asiarch render DIR --dry-run


def cmd_render(args) -> int:
    """Print what a round would submit: the scheduler's wrapper and one attempt's job script."""
    from asiarch.dispatch import make_scheduler
    from asiarch.dispatch.attempt import write_attempt_files
    from asiarch.job.contract import AttemptFiles
    from asiarch.layout import ExperimentDir, run_key

    root = Path(args.dir)
    cfg = load_experiment_config(root, args.config)
    exp = ExperimentDir(root)
    with tempfile.TemporaryDirectory(prefix="asiarch-render-") as tmp:
        paths = AttemptFiles(Path(tmp) / "candidates" / "00000-next" / "attempt-1")
        layer = paths.dir.parent / "layer.py"
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


def render_parser(sub) -> None:
    s = sub.add_parser("render", help="print the scripts a round would submit")
    s.add_argument("dir")
    s.add_argument("--config", help="config file (default: DIR/config.toml)")
    s.add_argument("--dry-run", action="store_true", help="(always) print, submit nothing")
    s.set_defaults(func=cmd_render)


# ---------------------------------------------------------------------- asiarch head-script DIR


def cmd_head_script(args) -> int:
    """Print the sbatch script that runs this experiment's head as a self-requeueing Slurm job."""
    from asiarch.dispatch.render import render_head_script

    root = Path(args.dir).resolve()
    cfg = load_experiment_config(root)
    c = cfg.cluster
    print(render_head_script(name=cfg.experiment.name, experiment_dir=str(root),
                             asiarch=(sys.executable, "-m", "asiarch"), time_min=args.time_min,
                             partition=args.partition or c.partition, account=c.account, qos=c.qos,
                             modules=tuple(c.modules)), end="")
    return 0


def head_script_parser(sub) -> None:
    s = sub.add_parser("head-script", help="print an sbatch script that runs the head as a self-requeueing job")
    s.add_argument("dir")
    s.add_argument("--time-min", type=int, default=24 * 60, help="the head job's time limit (minutes)")
    s.add_argument("--partition", default="", help="partition for the head (default: the experiment's)")
    s.set_defaults(func=cmd_head_script)


# ---------------------------------------------------------------------- asiarch add DIR LAYER.py


def cmd_add(args) -> int:
    """Add a layer by hand: checked and trained by the next `asiarch run`, then a possible parent."""
    from asiarch.job.candidate import code_sha256
    from asiarch.layout import ExperimentDir
    from asiarch.propose.genome import genome_from_code
    from asiarch.store import Store

    exp = ExperimentDir(Path(args.dir))
    if (why := not_an_experiment(exp)) is not None:
        return die(why)
    layer = Path(args.layer)
    try:
        code = layer.read_text()
    except OSError as exc:
        return die(f"{layer}: {exc.strerror}")
    with Store.open(exp.db) as store:
        sha = code_sha256(code)
        shas, _ = store.known_keys()
        if sha in shas:
            return die(f"{layer}: this exact code is already in the experiment")
        genome = genome_from_code(code)
        cid = store.add_candidate(name=args.name or layer.stem, origin="manual", code=code, code_sha256=sha,
                                  motivation=args.motivation, genome_key=genome.key() if genome else "")
    print(f"added #{cid} {args.name or layer.stem}; `asiarch run {exp.root}` checks and trains it")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("add", help="add a layer file to an experiment by hand")
    s.add_argument("dir")
    s.add_argument("layer")
    s.add_argument("--name", default=None)
    s.add_argument("--motivation", default="Added by hand.")
    s.set_defaults(func=cmd_add)


PARSERS = {"demo": demo_parser, "init": init_parser, "run": run_parser, "render": render_parser,
           "head-script": head_script_parser, "add": add_parser}


def register(subparsers, *names: str) -> None:
    """Add the parsers of the commands ``names`` (default: all of this module's, in the order above)."""
    for name in names or PARSERS:
        PARSERS[name](subparsers)
