"""Commands on one layer file, outside any experiment: check (the pre-flight), train (the job path).

Each command's parser is built right below its handler; :func:`register` adds them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from asiarch.cli.common import die
from asiarch.job.contract import DEFAULT_CLASS_NAME  # standard library only: the CLI starts fast

# `asiarch check` without --config: the pre-flight's own defaults, spelled out for --help.
CHECK_DEFAULTS = {"class_name": DEFAULT_CLASS_NAME, "hidden_size": 64, "num_heads": 4, "seq_len": 64,
                  "batch_size": None, "precision": "fp32", "sandbox": "auto"}


# ---------------------------------------------------------------------- asiarch check LAYER.py


def check_command(path: str, *, as_json: bool = False, **kwargs) -> int:
    """Pre-flight the layer file at ``path`` and print a table (or JSON); 0 iff it passes.

    ``kwargs`` go to :func:`asiarch.search.preflight.run_preflight`. A missing or unreadable file,
    or a sandbox that cannot run here, prints why and returns 2; ``sandbox="none"`` prints a warning.
    """
    from asiarch.dispatch.sandbox import RUN_WARNING
    from asiarch.search.preflight import Sandboxing, SandboxUnavailable, run_preflight

    try:
        source = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        print(f"asiarch check: no such file: {path}. Give the path of a candidate layer's .py file.", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print(f"asiarch check: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    kwargs.setdefault("filename", os.path.basename(path))
    sandboxing = Sandboxing.of(kwargs.get("sandbox", "auto"))
    try:
        if sandboxing.kind() == "none":
            print(f"asiarch check: {RUN_WARNING}", file=sys.stderr)
        report = run_preflight(source, **kwargs)
    except SandboxUnavailable as exc:
        print(f"asiarch check: {exc} (here: --sandbox none)", file=sys.stderr)
        return 2
    print(report.to_json() if as_json else report.format_table())
    return 0 if report.ok else 1


def cmd_check(args) -> int:
    """Pre-flight one layer at the settings given, else the experiment's (--config), else the defaults."""
    settings = dict(CHECK_DEFAULTS)
    if args.config:
        from asiarch.config import ConfigError, load_config
        from asiarch.search.preflight import preflight_settings

        path = Path(args.config)
        path = path / "config.toml" if path.is_dir() else path
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            return die(f"check: {exc}")
        settings.update(preflight_settings(cfg))  # the settings the loop's pre-flight uses
        if cfg.train.task == "lm" and cfg.train.data:
            problem = _verify_data(cfg.train.data)
            if problem:
                return die(f"check: train.data: {problem}", 1)
    for key in ("class_name", "hidden_size", "num_heads", "seq_len", "batch_size", "precision", "sandbox"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    return check_command(args.layer, as_json=args.json, **settings)


def check_parser(sub) -> None:
    s = sub.add_parser("check", help="pre-flight checks of one layer file, at the settings training uses")
    s.add_argument("layer")
    s.add_argument("--json", action="store_true")
    s.add_argument("--config", default=None, metavar="DIR/config.toml",
                   help="take the settings from an experiment's config (train.seq_len, batch_size / nproc, "
                        "precision, hidden_size, num_heads, max_params; search.class_name, allow_quadratic; "
                        "cluster.sandbox), as the loop's pre-flight does; the options below override them")
    s.add_argument("--class-name", default=None, help=f"default: {CHECK_DEFAULTS['class_name']}")
    s.add_argument("--hidden-size", type=int, default=None, help=f"default: {CHECK_DEFAULTS['hidden_size']}")
    s.add_argument("--num-heads", type=int, default=None, help=f"default: {CHECK_DEFAULTS['num_heads']}")
    s.add_argument("--seq-len", type=int, default=None, help="the training length; the probes run there, at twice "
                                                             "and four times it, and at a short and an odd length "
                                                             f"(default: {CHECK_DEFAULTS['seq_len']})")
    s.add_argument("--batch-size", type=int, default=None, help="the training batch per rank (default: 8)")
    s.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="training precision: bf16 runs the checks under bf16 autocast (default: fp32)")
    s.add_argument("--sandbox", default=None, choices=("auto", "bwrap", "apptainer", "none"),
                   help="the OS sandbox the layer runs in (cluster.sandbox; 'none' runs it unsandboxed; "
                        "default: auto)")
    s.set_defaults(func=cmd_check)


# ---------------------------------------------------------------------- asiarch train LAYER.py --out RESULT.h5


def _verify_data(directory: str) -> str | None:
    """Why the prepared ``directory`` must not be trained on (a shard missing, or whose sha256 differs
    from its manifest's), or None. Reads every shard: done on the head, once, before a job is sent."""
    from asiarch.job.data import DataError, verify_shards

    try:
        verify_shards(directory)
    except DataError as exc:
        return str(exc)
    return None



def cmd_train(args) -> int:
    """Train one layer through the loop's own job path (spec, rendered script, torchrun, result file)."""
    from asiarch.config import Config, ConfigError, validate
    from asiarch.dispatch.attempt import write_attempt_files
    from asiarch.dispatch.payload import JobScriptFailed, run_job_script
    from asiarch.job import result as rf
    from asiarch.job.candidate import code_sha256
    from asiarch.job.contract import AttemptFiles

    layer = Path(args.layer)
    if not layer.exists():
        return die(f"{layer}: no such layer file")
    cfg = Config()
    t = cfg.train
    t.task, t.steps, t.nproc = args.task, args.steps, args.nproc
    if args.token_file:
        t.token_file = str(Path(args.token_file).resolve())  # as --data: the job runs elsewhere
    if args.data:
        t.data = str(Path(args.data).resolve())  # the job runs in its attempt directory
    if args.lm_eval:
        t.lm_eval_tasks = [name.strip() for name in args.lm_eval.split(",") if name.strip()]
    if args.lm_eval_include:
        t.lm_eval_include = str(Path(args.lm_eval_include).resolve())
    for key in ("hidden_size", "num_layers", "num_heads", "seq_len", "batch_size", "lr", "precision", "vocab_size",
                "lm_eval_limit"):
        if getattr(args, key) is not None:
            setattr(t, key, getattr(args, key))
    try:
        validate(cfg)
    except ConfigError as exc:
        return die(str(exc))
    if t.task == "lm" and t.data:
        problem = _verify_data(t.data)
        if problem:
            return die(f"train.data: {problem}")
    out = Path(args.out).resolve()
    # the attempt's files (spec, script, log, progress) in a directory beside the result, so that the
    # result's rename from there onto --out is atomic (one filesystem)
    # (a directory of its own: the job may write only there, whatever --out's directory is, a home one included)
    paths = AttemptFiles(Path(tempfile.mkdtemp(prefix="asiarch-train-", dir=out.parent)) / "attempt-1")
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
        rec = rf.read_result(paths.result)
    except rf.ResultFileError as exc:
        return die(str(exc), 1)
    paths.result.replace(out)
    summary = rf.summary(rec)
    print(f"{rec.status}: eval loss {summary.get('eval_loss')}, metrics {rec.metrics}, "
          f"{rec.tokens_per_s:,.0f} tok/s, {time.time() - t0:.1f} s; result: {out}")
    if rec.error:
        print(rec.error, file=sys.stderr)
    for name, why in (rec.env.get("lm_eval_errors") or {}).items():
        print(f"lm-eval {name} did not run: {why}", file=sys.stderr)
    return 0 if rec.status == "ok" else 1


def train_parser(sub) -> None:
    s = sub.add_parser("train", help="train one layer through the job path and write its result file")
    s.add_argument("layer")
    s.add_argument("--out", required=True, help="result file to write (HDF5)")
    s.add_argument("--task", default="mqar", choices=("mqar", "lm"))
    s.add_argument("--token-file", default="", help="LM: a flat uint16 token file (train.token_file)")
    s.add_argument("--data", default="", metavar="DIR",
                   help="LM: a directory from `asiarch data prepare` (train.data); its manifest sets the vocabulary")
    s.add_argument("--lm-eval", default="", metavar="TASKS",
                   help="LM: lm-eval tasks after training, comma-separated (train.lm_eval_tasks; needs --data)")
    s.add_argument("--lm-eval-include", default="", metavar="DIR",
                   help="LM: a directory of lm-eval task YAMLs, e.g. local tasks over JSONL files")
    s.add_argument("--lm-eval-limit", type=int, default=None, metavar="N", help="LM: lm-eval samples per task")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--nproc", type=int, default=2)
    s.add_argument("--class-name", default=DEFAULT_CLASS_NAME)
    s.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="bf16: autocast, as ASI-Arch trained (layers that cast to bf16 inside need it; works on CPU)")
    for key, tp in (("hidden_size", int), ("num_layers", int), ("num_heads", int), ("seq_len", int),
                    ("batch_size", int), ("lr", float), ("vocab_size", int)):
        s.add_argument("--" + key.replace("_", "-"), dest=key, type=tp, default=None)
    s.set_defaults(func=cmd_train)


def register(sub) -> None:
    """Add the parsers of `asiarch check` and `asiarch train`."""
    check_parser(sub)
    train_parser(sub)
