"""The kill-the-head stress run: ``asiarch bench kill-head``.

Runs a real search (local scheduler, real torchrun jobs) in a fresh experiment directory,
kills its head with SIGKILL at random moments ``kills`` times -- each time starting it
again with ``asiarch run DIR`` -- then lets the last head finish, and audits the store and
the attempt directories:

- lost: candidates the budget asked for that did not end scored, failed or stopped (a watchdog or
  early-stopping stop ends a candidate with its reason and partial curve: settled, not lost);
- trained twice: candidates with more than one attempt whose job ran the trainer to a
  result file (a head that forgot a running job and started it again);
- wasted: attempts given up as lost although their job had started training;
- over budget: candidates trained beyond ``budget.candidates``;
- duplicate code: two candidates with the same code;
- left behind: processes still running once the last head has finished whose command line or
  environment names the experiment directory (a job's ranks nobody watches; target 0).

By default (``kill="head"``) the SIGKILL goes to the head's pid alone, as ``kill -9 PID`` on a
login node; ``kill="group"`` sends it to the head's whole process group (the heads then run in
sessions of their own), as ``kill -9 -PGID`` would: the head's local jobs die with it, but not
torchrun's ranks, each in a session of its own; ``"mixed"`` alternates the two.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from asiarch.config import demo_config, render_toml
from asiarch.job import result as rf
from asiarch.job.contract import AttemptFiles
from asiarch.layout import ExperimentDir
from asiarch.store import Store, queries

__all__ = ["stress_config", "kill_head_stress", "audit", "format_stress", "left_behind", "KILLS"]

#: What each SIGKILL of ``kill_head_stress`` hits: the head's pid, its process group, or by turns.
KILLS = ("head", "group", "mixed")


def stress_config(name: str, candidates: int):
    """A search whose jobs take a few seconds each: one baseline, small model, 12 steps, 1 rank."""
    cfg = demo_config(name)
    cfg.baselines.names = ["deltanet"]
    cfg.baselines.reference = "deltanet"
    t = cfg.train
    t.hidden_size, t.num_heads, t.steps, t.batch_size, t.log_every, t.warmup_steps, t.eval_batches = \
        32, 2, 12, 8, 4, 2, 2
    t.nproc = 1
    cfg.cluster.max_in_flight = 2
    cfg.cluster.poll_interval_s = 0.2
    cfg.budget.candidates = candidates
    cfg.search.round_size = 4
    return cfg


def _snapshot(db: Path) -> str:
    """Candidate statuses of non-baselines, for the kill log (empty before the store exists)."""
    if not db.exists():
        return "no store yet"
    try:
        with Store.open_readonly(db) as s:
            counts = s.counts()
    except Exception as exc:  # a reader must never fail the run; say what it saw
        return f"store unreadable ({exc})"
    return ", ".join(f"{n} {st}" for st, n in sorted(counts.items())) or "no candidates yet"


def _head(root: Path, log, python: str, own_group: bool = False) -> subprocess.Popen:
    # own_group: a session of its own, so that a kill of its process group reaches the head and its
    # jobs, not this run
    return subprocess.Popen([python, "-m", "asiarch", "run", str(root), "--quiet"], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=own_group)


def _ancestors() -> set[int]:
    """This process and those above it (the `asiarch bench kill-head --dir DIR` that runs it names DIR)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def left_behind(root: Path, grace_s: float = 10.0) -> list[str]:
    """Processes of this machine whose command line or environment names ``root`` (resolved or as
    given), but this one and its ancestors: after ``grace_s`` seconds for those that are ending
    (a job's controller exits just after the job) to go. Returns ``"PID COMMAND"`` lines."""
    names = {str(Path(root)).encode(), str(Path(root).resolve()).encode()}
    mine = _ancestors()
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in mine:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
            except OSError:  # ended meanwhile, or another user's
                continue
            if cmdline and any(n in cmdline or n in environ for n in names):  # a zombie has no cmdline
                command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"{entry.name} {command[:200]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def kill_head_stress(root: Path, *, candidates: int = 20, kills: int = 10, seed: int = 0,
                     min_delay_s: float = 0.5, max_delay_s: float = 15.0, python: str | None = None,
                     finish_timeout_s: float = 1800.0, kill: str = "head", sandbox: str | None = None,
                     progress=print) -> dict:
    """Run the stress (see the module docstring) in ``root`` (created; must not exist) and return
    the audit, with the kill log under "kills", the processes left behind under "left_behind" (a
    count) and "left_behind_processes", and the wall time under "wall_s". ``kill`` is one of
    :data:`KILLS`; ``sandbox`` sets cluster.sandbox (default: the config's)."""
    if kill not in KILLS:
        raise ValueError(f"kill {kill!r}: one of {', '.join(KILLS)}")
    root = Path(root)
    root.mkdir(parents=True)
    python = python or sys.executable
    cfg = stress_config("stress", candidates)
    if sandbox is not None:
        cfg.cluster.sandbox = sandbox
    (root / "config.toml").write_text(render_toml(cfg))
    rng = random.Random(seed)
    exp = ExperimentDir(root)
    t0 = time.time()
    kill_log = []
    with open(root / "heads.log", "ab") as log:
        for i in range(kills):
            delay = rng.uniform(min_delay_s, max_delay_s)
            head = _head(root, log, python, own_group=kill != "head")
            try:
                head.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                group = kill == "group" or (kill == "mixed" and i % 2 == 1)
                if group:
                    os.killpg(head.pid, signal.SIGKILL)
                else:
                    head.send_signal(signal.SIGKILL)
                head.wait()
                seen = _snapshot(exp.db)
                kill_log.append({"kill": i + 1, "after_s": round(delay, 2), "group": group, "store": seen})
                progress(f"kill {i + 1}/{kills}: head{' and its process group' if group else ''} SIGKILLed "
                         f"after {delay:.1f} s ({seen})")
                continue
            if head.returncode != 0:
                raise RuntimeError(f"head {i + 1} exited with status {head.returncode} before its kill; "
                                   f"see {root / 'heads.log'}")
            progress(f"head {i + 1} finished the search before its kill ({delay:.1f} s); "
                     f"{kills - i - 1} kill(s) not done")
            break
        head = _head(root, log, python)
        code = head.wait(timeout=finish_timeout_s)
    progress(f"last head exited with status {code} ({_snapshot(exp.db)})")
    wall = round(time.time() - t0, 1)
    left = left_behind(root)
    out = audit(root, candidates)
    out.update(kills=kill_log, kills_done=len(kill_log), kill=kill, final_exit=code, wall_s=wall,
               left_behind=len(left), left_behind_processes=left)
    return out


def audit(root: Path, budget: int) -> dict:
    """Count lost, trained-twice, wasted and over-budget candidates of a finished search."""
    exp = ExperimentDir(Path(root))
    with Store.open_readonly(exp.db) as s:
        cands = [c for c in s.candidates() if c.origin != "baseline"]
        attempts = {c.id: s.attempts(c.id) for c in cands}
        adopted = queries.event_count(s, "adopted")
    statuses = Counter(c.status for c in cands)
    settled = statuses.get("done", 0) + statuses.get("failed", 0) + statuses.get("stopped", 0)
    trained_twice, wasted, abandoned_started = [], [], 0
    for c in cands:
        ran_ok = 0
        for a in attempts[c.id]:
            f = AttemptFiles(exp.root / a.dir)
            if f.result.exists():
                try:
                    ran_ok += rf.read_result(f.result).status == "ok"
                except rf.ResultFileError:
                    pass
            if a.status == "lost" and f.progress.exists():
                wasted.append(f"{c.name} attempt {a.n}")
            if f.abandoned.exists() and f.progress.exists():
                abandoned_started += 1
        if ran_ok > 1:
            trained_twice.append(c.name)
    codes = Counter(c.code_sha256 for c in cands)
    all_attempts = [a for v in attempts.values() for a in v]
    return {
        "budget": budget,
        "candidates": len(cands),
        "statuses": dict(statuses),
        "lost": max(0, budget - settled),
        "trained_twice": len(trained_twice),
        "trained_twice_names": trained_twice,
        "wasted_trainings": len(wasted),
        "wasted_names": wasted,
        "abandoned_but_started": abandoned_started,
        "over_budget": max(0, settled - budget),
        "duplicate_code": sum(n - 1 for n in codes.values() if n > 1),
        "attempts": len(all_attempts),
        "attempts_lost": sum(1 for a in all_attempts if a.status == "lost"),
        "adopted": int(adopted),
    }


def format_stress(out: dict) -> str:
    lines = [
        f"kill-head stress: {out['kills_done']} SIGKILLs of the head ({out.get('kill', 'head')}), budget {out['budget']} candidates, "
        f"{out['wall_s']} s",
        f"  candidates: {out['candidates']} ({', '.join(f'{n} {s}' for s, n in sorted(out['statuses'].items()))})",
        f"  lost: {out['lost']}   trained twice: {out['trained_twice']}   over budget: {out['over_budget']}"
        f"   duplicate code: {out['duplicate_code']}",
        f"  attempts: {out['attempts']} ({out['attempts_lost']} lost with a head and retried;"
        f" {out['adopted']} running jobs re-attached; {out['wasted_trainings']} trainings wasted)",
    ]
    if "left_behind" in out:
        lines.append(f"  processes left behind after the last head finished: {out['left_behind']}")
        lines += [f"    {line}" for line in out["left_behind_processes"][:10]]
    if out["trained_twice_names"] or out["wasted_names"]:
        lines.append(f"  trained twice: {out['trained_twice_names']}  wasted: {out['wasted_names']}")
    return "\n".join(lines)
