"""Pure rendering: typed specs in, text out. No subprocess, no filesystem writes.

Every Jinja template in templates/ is loaded through :func:`environment`, which uses
``StrictUndefined`` (a missing value is an error, not an empty string). Job-script
templates are rendered with :func:`render_shell`, whose environment shell-quotes every
interpolated value by default: LLM output reaches some of these strings (candidate
names), so nothing reaches the shell unquoted unless it is wrapped in :class:`Raw`.

A job without a container runs inside bubblewrap: :func:`render_job_script` renders the
sandbox's command line from the spec's :class:`~asiarch.dispatch.sandbox.SandboxSpec`
(:func:`~asiarch.dispatch.sandbox.bwrap_argv`) plus the few words the script resolves on the
node when it runs (scratch, GPU device nodes, Slurm's variables), and passes the scheduler's
stop signals on to torchrun inside.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import jinja2

from asiarch.dispatch.sandbox import JOB_PASS_ENV, SandboxSpec, bwrap_argv
from asiarch.job.contract import SECRET_PATTERN


class Raw(str):
    """A string that is already valid shell (e.g. ``"$SLURM_JOB_ID"``); rendered unquoted."""


def shell_quote(value) -> str:
    """Quote one value or a list of words for a POSIX shell."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, (list, tuple)):
        return " ".join(shell_quote(v) for v in value)
    if isinstance(value, bool):
        value = int(value)
    return shlex.quote(str(value))


def _loader() -> jinja2.BaseLoader:
    return jinja2.FileSystemLoader(str(resources.files("asiarch.templates")))


@lru_cache(maxsize=None)
def environment(shell: bool = False) -> jinja2.Environment:
    """The project's Jinja environment; with ``shell`` every ``{{ value }}`` is shell-quoted."""
    env = jinja2.Environment(
        loader=_loader(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=shell_quote if shell else None,
    )
    env.filters["shquote"] = shell_quote
    env.filters["envname"] = _envname
    env.filters["directive"] = _directive
    env.filters["comment"] = _comment
    return env


def _envname(name: str) -> Raw:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a valid environment variable name: {name!r}")
    return Raw(name)


def _directive(line: str) -> Raw:
    """A scheduler directive (``#SBATCH --x=y``), built by the head from validated values."""
    if "\n" in line or not line.startswith("#"):
        raise ValueError(f"a scheduler directive must be one line starting with '#': {line!r}")
    return Raw(line)


def _comment(text: str) -> Raw:
    """Text inside a comment: one line, no way to end the comment."""
    return Raw(re.sub(r"[^A-Za-z0-9_.:-]", "_", str(text)))


def render_template(name: str, **context) -> str:
    return environment(False).get_template(name).render(**context)


@dataclass(frozen=True)
class JobScriptSpec:
    """Everything the job script of one attempt needs; built by the head, rendered here."""

    run_key: str
    attempt_dir: str
    command: tuple[str, ...]                 # the launcher's argv (torchrun, maybe inside apptainer)
    env: tuple[tuple[str, str], ...] = ()    # exported variables, sorted for stable output
    modules: tuple[str, ...] = ()
    log: str = "job.log"
    header: tuple[str, ...] = field(default=())  # scheduler directives, rendered verbatim (already safe)
    sandbox: SandboxSpec | None = None       # bubblewrap around the command (a job with no container)


# What the job script itself resolves when it runs, on the node (templates/job.sh.j2 defines them).
_RUN_TIME_BWRAP = Raw('"$asiarch_bwrap"')                            # bwrap on the node's PATH
_RUN_TIME_ENV = Raw('${asiarch_env[@]+"${asiarch_env[@]}"}')         # variables passed on (Slurm's ids, GPUs)
_RUN_TIME_BINDS = Raw('${asiarch_binds[@]+"${asiarch_binds[@]}"}')   # library dirs and GPU device nodes found there
_INFO_FD = 9                                                         # bwrap writes the command's pid there


def _pass_patterns(names: tuple[str, ...]) -> Raw:
    """``A|B|NCCL_*``: a case pattern of variable names (fixed in asiarch, checked anyway)."""
    for name in names:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*\*?", name):
            raise ValueError(f"not a variable name or NAME_* prefix: {name!r}")
    return Raw("|".join(names))


def _device_globs(devices: tuple[str, ...]) -> tuple[Raw, ...]:
    """Device-node globs (``/dev/nvidia*``), unquoted so that the shell expands them on the node."""
    for dev in devices:
        if not re.fullmatch(r"/dev/[A-Za-z0-9_*-]+", dev):
            raise ValueError(f"not a device node glob under /dev: {dev!r}")
    return tuple(Raw(d) for d in devices)


def render_job_script(spec: JobScriptSpec) -> str:
    """The bash script that runs one attempt (templates/job.sh.j2); inside bubblewrap when
    ``spec.sandbox`` is set (its command then is the sandbox's pid 1, so that the TERM or HUP the
    script passes on reaches torchrun)."""
    sandbox = None
    if spec.sandbox is not None:
        if spec.sandbox.kind != "bwrap":
            raise ValueError(f"a job script wraps its command in bwrap only; {spec.sandbox.kind} goes in the command")
        # device nodes are globs the script expands on the node (/dev/nvidia*), bound where they exist
        sb = dataclasses.replace(spec.sandbox, executable=_RUN_TIME_BWRAP, as_pid_1=True,
                                 info_fd=_INFO_FD, devices=(), extra_env=(_RUN_TIME_ENV,) + spec.sandbox.extra_env,
                                 extra=(_RUN_TIME_BINDS,) + spec.sandbox.extra)
        sandbox = {"argv": bwrap_argv(sb, spec.command), "info_fd": Raw(str(_INFO_FD)),
                   "devices": _device_globs(spec.sandbox.devices), "pass_env": _pass_patterns(JOB_PASS_ENV),
                   "secret_pattern": Raw(SECRET_PATTERN.pattern.upper()),  # contract.is_secret, in bash ERE
                   "network": Raw("the host's network (a job of several nodes)" if sb.host_network
                                  else "no network but its own loopback")}
    return environment(True).get_template("job.sh.j2").render(spec=spec, env=sorted(spec.env), sandbox=sandbox)


def torchrun_command(python: str, nproc: int, spec_path: str, *, nnodes: int = 1,
                     rdzv_endpoint: str | None = None) -> tuple[str, ...]:
    # (a Raw endpoint, e.g. the first host computed by the job itself, is rendered unquoted)
    """``python -m torch.distributed.run ... -m asiarch.job.train SPEC``: single node standalone,
    several nodes through a c10d rendezvous (the endpoint is the first host of the allocation)."""
    cmd = [python, "-m", "torch.distributed.run"]
    if nnodes == 1:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        if not rdzv_endpoint:
            raise ValueError("multi-node torchrun needs a rendezvous endpoint (host:port)")
        endpoint = f"--rdzv-endpoint={rdzv_endpoint}"
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d",
                Raw(endpoint) if isinstance(rdzv_endpoint, Raw) else endpoint]
    cmd += [f"--nproc-per-node={nproc}", "-m", "asiarch.job.train", spec_path]
    return tuple(cmd)


def apptainer_command(inner: tuple[str, ...], *, image: str, binds: list[str] | tuple[str, ...] = (),
                      env: tuple[tuple[str, str], ...] = (), nv: bool = False, cleanenv: bool = True,
                      containall: bool = False, network_none: bool = False) -> tuple[str, ...]:
    """``apptainer exec [flags] IMAGE INNER...``: the job's command inside the container.

    Binds keep host paths (``src`` alone binds src to the same path), so the spec's paths
    resolve inside the container as outside; with ``cleanenv`` the variables the job needs are
    passed explicitly with ``--env``.
    """
    cmd = ["apptainer", "exec"]
    if nv:
        cmd.append("--nv")
    if containall:
        cmd.append("--containall")
    if cleanenv:
        cmd.append("--cleanenv")
    if network_none:
        cmd += ["--net", "--network", "none"]
    for bind in dict.fromkeys(binds):  # de-duplicated, in order
        cmd += ["--bind", bind]
    for name, value in env:
        cmd += ["--env", f"{name}={value}"]
    return tuple(cmd) + (image,) + tuple(inner)


def render_head_script(*, name: str, experiment_dir: str, asiarch: tuple[str, ...], time_min: int,
                       partition: str = "", account: str = "", qos: str = "", warn_s: int = 300,
                       modules: tuple[str, ...] = ()) -> str:
    """The sbatch script that runs the head itself as a self-requeueing job (templates/head.sbatch.j2)."""
    opts = {"job-name": f"asiarch-head-{name}", "time": str(time_min), "cpus-per-task": "2", "mem": "4G",
            "requeue": None, "open-mode": "append", "signal": f"B:USR1@{warn_s}",
            "output": f"{experiment_dir}/head-%j.log"}
    for key, value in (("partition", partition), ("account", account), ("qos", qos)):
        if value:
            opts[key] = value
    directives = [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={shell_quote(v)}" for k, v in sorted(opts.items())]
    command = tuple(asiarch) + ("run", experiment_dir)  # its progress lines are the head's log
    return environment(True).get_template("head.sbatch.j2").render(
        name=name, directives=directives, modules=modules, command=command)
