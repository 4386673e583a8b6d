"""The OS sandbox around every process that runs candidate code: its command line, composed purely.

Candidate layers are LLM-written and untrusted. The pre-flight on the head node and every
training job run them inside one of two runtimes, chosen by ``cluster.sandbox``:

- **bubblewrap** (``bwrap``; Debian's ``bubblewrap``): new user, pid, network, IPC, UTS, mount
  and cgroup namespaces (``--unshare-all --unshare-user``; no further user namespaces inside),
  no capabilities, ``--die-with-parent``, ``--new-session`` (no terminal to inject into), an
  empty environment plus the variables the process needs, the system directories, the
  interpreter, the asiarch package and the layer read-only, a private ``/tmp``, no home
  directory, only the work directory writable (a job's attempt directory and its checkpoint's),
  a fresh ``/proc`` of the new pid namespace (the head's processes are not in it, so neither is
  its environment or memory), a minimal ``/dev`` (plus the GPU device nodes and a read-only
  ``/sys`` for GPU jobs), and a process limit. The sandbox dies with
  its first process: when it exits, the kernel kills everything else in the pid namespace,
  double-forked daemons included.
- **Apptainer** with ``cluster.container_image``: ``apptainer exec --containall --cleanenv
  --no-home --net --network none``, the work directory the one writable bind.

Networking: a single-node job keeps a loopback interface inside its own network namespace, so
its ranks meet there (gloo, NCCL); a multi-node job needs the host network to reach the other
nodes and shares it (:attr:`SandboxSpec.host_network`): every other wall stays.

The process limit is ``RLIMIT_NPROC``, set by a one-line shim (:func:`limit_argv`) inside the
new user namespace, where the kernel counts only the sandbox's own processes. The kernel does
not enforce ``RLIMIT_NPROC`` for root, so a head running as root also puts the pre-flight in a
pids cgroup where it can (``asiarch.search.preflight``).

The functions of the first part are pure (a :class:`SandboxSpec` in, an argv out) so that
tests and job scripts see exactly what will run; probing the host (does bwrap work, what the
interpreter needs) is in the last part. Words may be :class:`asiarch.dispatch.render.Raw`
shell (the job script expands ``"$asiarch_bwrap"`` on the node); they pass through untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "KINDS", "SandboxSpec", "SandboxUnavailable", "bwrap_argv", "apptainer_argv", "limit_argv", "sandbox_argv",
    "job_sandbox", "attempt_sandbox", "data_binds", "JOB_PASS_ENV", "GPU_DEVICES", "JOB_MAX_PROCS",
    "bwrap_problem", "resolve_kind", "interpreter_paths", "package_dir", "RUN_WARNING",
]

#: The values of ``cluster.sandbox``.
KINDS = ("auto", "bwrap", "apptainer", "none")

#: System directories bound read-only where they exist (on merged-/usr systems /bin, /lib... are
#: symlinks into /usr; a bind follows them).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: From /etc only what the dynamic loader, user and host lookups and the time zone need; the rest
#: of /etc (and every home directory, /root, /run, /var, /srv, /mnt, /media) is not there at all.
ETC_PATHS = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/passwd",
             "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/host.conf", "/etc/localtime")

#: Variables a job's script passes into its sandbox when they are set on the node (a secret never:
#: the script checks the names too): the scheduler's ids, the GPUs it gave the job, what
#: ``module load`` set up, NCCL's and asiarch's own settings. NAME_* is a prefix.
JOB_PASS_ENV = ("PATH", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "TZ", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
                "SLURM_ARRAY_TASK_ID", "SUBMITIT_LOCAL_JOB_ID", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                "HIP_VISIBLE_DEVICES", "NCCL_*", "ASIARCH_*")
#: Device nodes a GPU job binds in where they exist on the node (NVIDIA, AMD).
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")
#: And a job of several nodes, for NCCL over InfiniBand (never a single-node job: RDMA would bypass
#: its network namespace).
FABRIC_DEVICES = ("/dev/infiniband",)
#: Processes and threads one training job may hold: torchrun, one process per rank, their thread
#: pools, NCCL's and the compiler's workers stay well below it; a fork bomb stops here.
JOB_MAX_PROCS = 4096

#: Python, started without site or environment, that sets RLIMIT_NPROC, closes every inherited
#: descriptor but stdin/stdout/stderr, restores the default action of TERM, HUP and INT (a job
#: script starts bwrap with them ignored, so that Slurm's TERM to every process of the job cannot
#: kill bwrap's monitor, and with it the whole sandbox), and runs the command: argv is ``-c`` LIMIT
#: COMMAND... Not the sandbox's pid 1 (a pre-flight), it execs the command. As pid 1 (a job), it
#: is the sandbox's init: it runs the command as its child, passes TERM/HUP/INT on to it, and waits
#: for every process of the sandbox, at most 60 s after the command ended. torchrun
#: hearing TERM twice (from Slurm and from the job script) exits before its ranks have
#: checkpointed; with torchrun as pid 1 its exit killed them mid-write, now they finish.
_LIMIT_SHIM = """import os,resource,signal,sys
n=int(sys.argv[1]);resource.setrlimit(resource.RLIMIT_NPROC,(n,n))
for s in (1,2,15):signal.signal(s,signal.SIG_DFL)
os.closerange(3,65536)
if os.getpid()!=1:os.execvp(sys.argv[2],sys.argv[2:])
pid=os.fork()
if pid==0:os.execvp(sys.argv[2],sys.argv[2:])
def fwd(s,f):
 try:os.kill(pid,s)
 except OSError:pass
for s in (1,2,15):signal.signal(s,fwd)
rc=0
while True:
 try:p,st=os.wait()
 except ChildProcessError:break
 if p==pid:
  rc=os.waitstatus_to_exitcode(st);rc=rc if rc>=0 else 128-rc
  signal.signal(signal.SIGALRM,lambda s,f:os._exit(rc));signal.alarm(60)
sys.exit(rc)"""

#: Printed on every run with cluster.sandbox = "none".
RUN_WARNING = ("WARNING: cluster.sandbox = 'none': LLM-written candidate code runs WITHOUT a sandbox, as you, "
               "beside your API key, with your files and network in reach. Set cluster.sandbox = 'auto' "
               "(install bubblewrap: apt-get install bubblewrap / dnf install bubblewrap) to contain it.")


class SandboxUnavailable(RuntimeError):
    """The configured sandbox cannot run here; the message says what to install or set."""


@dataclass(frozen=True)
class SandboxSpec:
    """What one sandboxed process sees and may do. Paths are host paths, seen at the same path inside.

    ``read_only`` (interpreter, package, layer, data) and ``writable`` (the work or attempt
    directory) are mounted most general first, so a path inside another takes its own mode;
    ``protected`` files inside a writable directory (the layer, the job script, the spec) stay
    read-only. ``env`` is the whole environment inside. ``extra_env`` and ``extra`` are more
    words (the job script's run-time variables, and binds after the others).
    """

    kind: str                                  # "bwrap" or "apptainer"
    cwd: str
    env: tuple[tuple[str, str], ...] = ()
    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    host_network: bool = False                 # multi-node jobs: the other nodes are on the host network
    devices: tuple[str, ...] = ()              # device nodes bound in when they exist (bwrap)
    gpu: bool = False                          # apptainer --nv
    max_procs: int = 256                       # RLIMIT_NPROC inside the user namespace (processes and threads)
    # size of the private /tmp, a tmpfs. Never a host directory: bwrap creates the mount points of
    # binds under /tmp inside it, and removing that directory from outside detaches them from the
    # running sandbox (a requeued job lost its attempt directory mid-checkpoint that way)
    tmp_mb: int = 1024
    limit_python: str = sys.executable         # the interpreter of the process-limit shim
    executable: str = "bwrap"                  # bwrap or apptainer
    image: str = ""                            # the Apptainer image
    as_pid_1: bool = False                     # the command is the namespace's pid 1 (forwarded signals reach it)
    info_fd: int | None = None                 # bwrap writes {"child-pid": N} there (the job script forwards to N)
    extra_env: tuple[str, ...] = ()            # bwrap: words before the environment (variables passed on)
    extra: tuple[str, ...] = ()                # words after the mounts (more binds, apptainer's user binds)

    def __post_init__(self) -> None:
        if self.kind not in ("bwrap", "apptainer"):
            raise ValueError(f"SandboxSpec.kind {self.kind!r}: one of 'bwrap', 'apptainer' (no spec for 'none')")
        if self.kind == "apptainer" and not self.image:
            raise ValueError("an Apptainer sandbox needs an image (cluster.container_image)")
        if self.max_procs < 1:
            raise ValueError(f"SandboxSpec.max_procs must be positive, got {self.max_procs}")


# ----------------------------------------------------------------------------------
# composition (pure)


def limit_argv(spec: SandboxSpec, command) -> list[str]:
    """``COMMAND`` behind the process-limit shim: RLIMIT_NPROC = ``spec.max_procs``, then exec."""
    return [spec.limit_python, "-I", "-S", "-c", _LIMIT_SHIM, str(spec.max_procs), *command]


def _depth(path: str) -> int:
    return len([p for p in str(path).split("/") if p])


def _mounts(spec: SandboxSpec) -> list[tuple[str, str]]:
    """(mode, path) most general first; at equal depth read-only, then writable, then protected."""
    items = [("ro", p) for p in spec.read_only] + [("rw", p) for p in spec.writable] + \
            [("protected", p) for p in spec.protected]
    rank = {"ro": 0, "rw": 1, "protected": 2}
    seen, out = set(), []
    for mode, path in sorted(items, key=lambda mp: (_depth(mp[1]), rank[mp[0]])):
        if (mode, path) not in seen:
            seen.add((mode, path))
            out.append((mode, path))
    return out


def bwrap_argv(spec: SandboxSpec, command) -> list[str]:
    """``bwrap [namespaces, mounts, environment] -- shim COMMAND...`` for ``spec``."""
    argv = [spec.executable, "--unshare-all", "--unshare-user", "--disable-userns"]
    if spec.host_network:
        argv.append("--share-net")
    argv += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    argv += list(spec.extra_env)  # before the environment: a variable set below wins over one passed on here
    for name, value in spec.env:
        argv += ["--setenv", name, value]
    for path in SYSTEM_DIRS + ETC_PATHS:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(spec.tmp_mb << 20), "--tmpfs", "/tmp"]
    for dev in spec.devices:
        argv += ["--dev-bind-try", dev, dev]
    for mode, path in _mounts(spec):
        argv += [{"ro": "--ro-bind-try", "rw": "--bind", "protected": "--ro-bind"}[mode], path, path]
    argv += list(spec.extra)
    if spec.as_pid_1:
        argv.append("--as-pid-1")
    if spec.info_fd is not None:
        argv += ["--info-fd", str(spec.info_fd)]
    argv += ["--chdir", spec.cwd, "--"]
    return argv + limit_argv(spec, command)


def apptainer_argv(spec: SandboxSpec, command) -> list[str]:
    """``apptainer exec --containall --cleanenv --no-home --net --network none [binds] IMAGE shim COMMAND...``."""
    argv = [spec.executable, "exec", "--containall", "--cleanenv", "--no-home"]
    if not spec.host_network:
        argv += ["--net", "--network", "none"]
    if spec.gpu:
        argv.append("--nv")
    for mode, path in _mounts(spec):
        argv += ["--bind", f"{path}:{path}" if mode == "rw" else f"{path}:{path}:ro"]
    for name, value in spec.env:
        argv += ["--env", f"{name}={value}"]
    argv += list(spec.extra)
    argv += ["--pwd", spec.cwd, spec.image]
    return argv + limit_argv(spec, command)


def sandbox_argv(spec: SandboxSpec, command) -> list[str]:
    """The argv that runs ``command`` inside ``spec``'s sandbox."""
    return (bwrap_argv if spec.kind == "bwrap" else apptainer_argv)(spec, command)


def job_sandbox(kind: str, *, attempt_dir: str, python: str, writable=(), protected=(), read_only=(),
                env=(), nodes: int = 1, gpus: int = 0, image: str = "", binds=()) -> SandboxSpec:
    """The sandbox of one training job, ``kind`` 'bwrap' or 'apptainer'.

    ``attempt_dir`` (the working directory) and ``writable`` (the checkpoint's directory) are
    the writable places; ``protected`` files in them (layer, spec, job script) stay read-only;
    ``read_only`` holds the data and, for bwrap, the interpreter's paths
    (:func:`interpreter_paths`, probed by the caller). ``env`` is what the job exports; the
    sandbox's own /tmp replaces TMPDIR and HOME. A single-node job talks over its private
    loopback; one of several nodes shares the host network. ``binds`` are the user's extra
    Apptainer binds, passed as they are.
    """
    env = dict(env)
    env.pop("TMPDIR", None)
    env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONNOUSERSITE": "1"})
    host_network = nodes > 1
    if not host_network:  # the ranks' sockets go over the sandbox's loopback, its only interface
        env.update({"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"})
    common = dict(cwd=str(attempt_dir), writable=(str(attempt_dir),) + tuple(map(str, writable)),
                  protected=tuple(map(str, protected)), host_network=host_network, max_procs=JOB_MAX_PROCS,
                  limit_python=python)
    if kind == "apptainer":
        extra = tuple(w for b in binds for w in ("--bind", b))
        return SandboxSpec("apptainer", env=tuple(sorted(env.items())), read_only=tuple(map(str, read_only)),
                           gpu=gpus > 0, executable="apptainer", image=image, extra=extra, **common)
    if kind != "bwrap":
        raise ValueError(f"job_sandbox: kind {kind!r} is not 'bwrap' or 'apptainer'")
    env["PYTHONPATH"] = str(Path(package_dir()).parent)  # the asiarch the head runs, bound read-only
    # GPU jobs: the device nodes, and /sys read-only (the driver and NCCL read the PCI topology there)
    gpu_paths = ("/sys",) if gpus > 0 else ()
    devices = (GPU_DEVICES if gpus > 0 else ()) + (FABRIC_DEVICES if host_network else ())
    return SandboxSpec("bwrap", env=tuple(sorted(env.items())),
                       read_only=tuple(dict.fromkeys(map(str, read_only))) + (package_dir(),) + gpu_paths,
                       devices=devices, **common)


# ----------------------------------------------------------------------------------
# probing the host (side effects: these look at the machine)


@lru_cache(maxsize=None)
def bwrap_problem(executable: str = "bwrap") -> str | None:
    """None when bubblewrap runs a sandbox of the kind :func:`bwrap_argv` composes here; else why not."""
    path = shutil.which(executable)
    if path is None:
        return f"{executable} is not installed (no {executable} on PATH)"
    probe = [path, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
             "--cap-drop", "ALL", "--clearenv"]
    for d in SYSTEM_DIRS:
        probe += ["--ro-bind-try", d, d]
    probe += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", "/bin/sh", "-c", "exit 0"]
    try:
        out = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{path} could not be started: {exc}"
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return (f"{path} cannot create a sandbox here: {why} (unprivileged user namespaces may be off: "
                "sysctl user.max_user_namespaces must be > 0; on Ubuntu 24.04 also "
                "kernel.apparmor_restrict_unprivileged_userns = 0)")
    return None


def resolve_kind(setting: str, *, container_image: str = "", probe=bwrap_problem) -> str:
    """The sandbox ``cluster.sandbox = setting`` means here: 'bwrap', 'apptainer' or 'none'.

    'auto' is Apptainer when a container image is configured, else bubblewrap when it works;
    when it does not, :class:`SandboxUnavailable` says how to install it or opt out.
    """
    if setting not in KINDS:
        raise ValueError(f"cluster.sandbox {setting!r}: one of {', '.join(map(repr, KINDS))}")
    if setting == "none":
        return "none"
    if setting == "apptainer" or (setting == "auto" and container_image):
        if not container_image:
            raise SandboxUnavailable("cluster.sandbox = 'apptainer' needs cluster.container_image")
        return "apptainer"
    problem = probe()
    if problem:
        raise SandboxUnavailable(
            f"cluster.sandbox = {setting!r}: {problem}. asiarch does not run LLM-written code without a sandbox. "
            "Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; RHEL/Fedora: dnf install bubblewrap), "
            "or set cluster.container_image to run in Apptainer, or set cluster.sandbox = 'none' to run candidate "
            "code unsandboxed (it can then read your API key and files).")
    return "bwrap"


def package_dir() -> str:
    """The asiarch package directory (read-only inside: the pre-flight and the trainer import from it)."""
    return str(Path(__file__).resolve().parents[1])


def _unsafe(path: Path) -> bool:
    """A directory never bound whole: the root, a home directory or anything above one."""
    homes = {Path(os.path.expanduser("~")).resolve(), Path("/root"), Path("/home")}
    return path == Path("/") or any(path == h or path in h.parents for h in homes)


def interpreter_paths(python: str = sys.executable) -> tuple[str, ...]:
    """The host paths ``python`` needs read-only: its prefixes and module search path.

    For this process's own interpreter that is ``sys.prefix``/``sys.base_prefix`` and every
    existing ``sys.path`` entry (site-packages, ``.pth`` additions) except the working
    directory; for another interpreter, its directory and the prefix above its real path. Never
    ``/``, a home directory or a directory above one (a virtualenv inside a home is fine).
    """
    found: list[Path] = []
    exe = Path(python if os.path.isabs(python) else shutil.which(python) or python)
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        found += [Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)]
        cwd = os.getcwd()
        found += [Path(p) for p in sys.path if p and os.path.isabs(p) and p != cwd]
    if exe.is_absolute():
        for bindir in dict.fromkeys((exe.parent, exe.resolve().parent)):
            found.append(bindir)
            prefix = bindir.parent  # a virtualenv or an installation prefix, not just any parent directory
            if (prefix / "pyvenv.cfg").exists() or (prefix / "lib").is_dir():
                found.append(prefix)
    out: list[str] = []
    for p in found:
        try:
            real = p.resolve()
        except OSError:
            continue
        if not real.exists() or _unsafe(real) or any(str(real).startswith(d + "/") or str(real) == d
                                                      for d in SYSTEM_DIRS):
            continue
        for q in dict.fromkeys((str(p), str(real))):  # the path as named and the one it resolves to
            if q not in out and not _unsafe(Path(q)):
                out.append(q)
    return tuple(out)


#: Files of a Hugging Face home that hold credentials (``huggingface-cli login`` writes them beside hub/).
HF_TOKEN_FILES = ("token", "stored_tokens")


def data_binds(train, cluster) -> list[str]:
    """The host directories a job reads its data from, bound read-only into its sandbox: ``train.token_file``'s
    directory, ``train.data``, ``train.lm_eval_include``, and ``cluster.hf_cache`` when lm-eval tasks run.
    Candidate code can read all of them, so :class:`SandboxUnavailable` (saying what to move) for one that is
    the root, a home directory or above one, and for a hub cache that holds a Hugging Face token."""
    hub = Path(cluster.hf_cache).resolve() if cluster.hf_cache and train.lm_eval_tasks else None
    named = [("train.token_file's directory", Path(train.token_file).resolve().parent)] if train.token_file else []
    named += [(key, Path(value).resolve()) for key, value in (("train.data", train.data),
                                                             ("train.lm_eval_include", train.lm_eval_include)) if value]
    named += [("cluster.hf_cache", hub)] if hub else []
    for key, path in named:
        if _unsafe(path):
            raise SandboxUnavailable(f"{key} is {path}: jobs bind it whole, read-only, where candidate code can read "
                                     f"it, and it is the root, a home directory or above one; move the data into a "
                                     f"directory of its own")
    found = [name for name in HF_TOKEN_FILES if hub and (hub / name).exists()]
    if found:
        raise SandboxUnavailable(f"cluster.hf_cache is {hub}, which holds a Hugging Face token ({', '.join(found)}) "
                                 f"that candidate code in the jobs could read: point it at the hub cache itself "
                                 f"({hub / 'hub'}) or a copy of it")
    return [str(path) for _, path in named]


def attempt_sandbox(cluster, *, train, python: str, attempt_dir, checkpoint_path: str, protected=(),
                    env=()) -> SandboxSpec | None:
    """The sandbox of one attempt's training job under ``cluster.sandbox`` (None for 'none').

    Writable: the attempt directory and the checkpoint's directory (the candidate's checkpoints/: a retry
    resumes from it); read-only on top: ``protected`` (the layer, the spec, the job script); the
    data (:func:`data_binds`) read-only. Raises :class:`SandboxUnavailable` when the sandbox cannot run
    (``auto`` without a working bwrap) or the data would bind too much.
    """
    kind = resolve_kind(cluster.sandbox, container_image=cluster.container_image)
    if kind == "none":
        return None
    data = data_binds(train, cluster)
    common = dict(attempt_dir=str(Path(attempt_dir).resolve()), writable=(str(Path(checkpoint_path).parent),),
                  protected=tuple(str(Path(p).resolve()) for p in protected), env=env, nodes=cluster.nodes,
                  gpus=cluster.gpus_per_node)
    if kind == "apptainer":
        return job_sandbox("apptainer", python=cluster.python or "python3", read_only=data,
                           image=cluster.container_image, binds=tuple(cluster.binds), **common)
    return job_sandbox("bwrap", python=python, read_only=tuple(interpreter_paths(python)) + tuple(data), **common)
