#!/usr/bin/env bash
# asiarch job demo-c00003-a1: rendered by asiarch, do not edit.
set -euo pipefail
module load cuda/12.4
export OMP_NUM_THREADS=1
export PYTHONUNBUFFERED=1
cd /scratch/exp/candidates/00003-delta/attempt-1
echo asiarch: demo-c00003-a1 starting on "$(hostname)" at "$(date -Is)"
# The candidate's code runs in a bubblewrap sandbox (asiarch.dispatch.sandbox): its own user, pid,
# IPC and mount namespaces, no network but its own loopback, only this attempt and its checkpoint
# writable, no home. Its first process is torchrun, which this script passes TERM/HUP/INT on to.
asiarch_bwrap="$(command -v bwrap)" || {
  echo "asiarch: bubblewrap (bwrap) is not installed on $(hostname): install it on the compute nodes" \
       "(apt-get install bubblewrap / dnf install bubblewrap), set cluster.container_image," \
       "or set cluster.sandbox = 'none' (no sandbox)" >&2
  exit 127
}
"$asiarch_bwrap" --unshare-all --unshare-user --ro-bind / / true || {
  echo "asiarch: bwrap cannot create a sandbox on $(hostname) (are unprivileged user namespaces off?" \
       "sysctl user.max_user_namespaces must be > 0): enable them, set cluster.container_image," \
       "or set cluster.sandbox = 'none' (no sandbox)" >&2
  exit 126
}
asiarch_run="$(mktemp -d "${TMPDIR:-/tmp}/asiarch-job.XXXXXX")"  # outside the sandbox: bwrap's report
trap 'rm -rf "$asiarch_run"' EXIT
asiarch_env=()
for asiarch_name in $(compgen -e); do  # passed on when set here, never a credential
  case "$asiarch_name" in PATH|LD_LIBRARY_PATH|LANG|LC_ALL|TZ|SLURM_JOB_ID|SLURM_ARRAY_JOB_ID|SLURM_ARRAY_TASK_ID|SUBMITIT_LOCAL_JOB_ID|CUDA_VISIBLE_DEVICES|ROCR_VISIBLE_DEVICES|HIP_VISIBLE_DEVICES|NCCL_*|ASIARCH_*) ;; *) continue ;; esac
  [[ "${asiarch_name^^}" =~ (KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL) ]] && continue
  asiarch_env+=(--setenv "$asiarch_name" "${!asiarch_name}")
done
asiarch_binds=()
IFS=: read -ra asiarch_libs <<< "${LD_LIBRARY_PATH:-}"
for asiarch_dir in ${asiarch_libs[@]+"${asiarch_libs[@]}"}; do  # what `module load` put there, read-only
  case "$asiarch_dir" in /|/home|/home/|/root|"$HOME"|"$HOME/") ;; /*) asiarch_binds+=(--ro-bind-try "$asiarch_dir" "$asiarch_dir") ;; esac
done
for asiarch_dev in /dev/nvidia*; do
  if [ -e "$asiarch_dev" ]; then asiarch_binds+=(--dev-bind "$asiarch_dev" "$asiarch_dev"); fi
done
for asiarch_dev in /dev/dri; do
  if [ -e "$asiarch_dev" ]; then asiarch_binds+=(--dev-bind "$asiarch_dev" "$asiarch_dev"); fi
done
for asiarch_dev in /dev/kfd; do
  if [ -e "$asiarch_dev" ]; then asiarch_binds+=(--dev-bind "$asiarch_dev" "$asiarch_dev"); fi
done
# bwrap itself ignores TERM/HUP/INT (Slurm signals every process of the job; bwrap's monitor
# dying would kill the sandbox before the trainer checkpoints): the signals reach torchrun below,
# whose shim restores their default action, and this script forwards them too.
trap '' TERM HUP INT
env -i "$asiarch_bwrap" --unshare-all --unshare-user --disable-userns --die-with-parent --new-session --cap-drop ALL --clearenv ${asiarch_env[@]+"${asiarch_env[@]}"} --setenv HOME /tmp --setenv OMP_NUM_THREADS 1 --setenv PYTHONPATH /opt/asiarch --setenv TMPDIR /tmp --ro-bind-try /usr /usr --ro-bind-try /bin /bin --ro-bind-try /sbin /sbin --ro-bind-try /lib /lib --ro-bind-try /lib32 /lib32 --ro-bind-try /lib64 /lib64 --ro-bind-try /libx32 /libx32 --ro-bind-try /etc/ld.so.cache /etc/ld.so.cache --ro-bind-try /etc/ld.so.conf /etc/ld.so.conf --ro-bind-try /etc/ld.so.conf.d /etc/ld.so.conf.d --ro-bind-try /etc/alternatives /etc/alternatives --ro-bind-try /etc/passwd /etc/passwd --ro-bind-try /etc/group /etc/group --ro-bind-try /etc/nsswitch.conf /etc/nsswitch.conf --ro-bind-try /etc/hosts /etc/hosts --ro-bind-try /etc/host.conf /etc/host.conf --ro-bind-try /etc/localtime /etc/localtime --proc /proc --dev /dev --size 1073741824 --tmpfs /tmp --ro-bind-try /opt/venv /opt/venv --ro-bind-try /opt/asiarch/asiarch /opt/asiarch/asiarch --bind /scratch/exp/candidates/00003-delta /scratch/exp/candidates/00003-delta --bind /scratch/exp/candidates/00003-delta/attempt-1 /scratch/exp/candidates/00003-delta/attempt-1 --ro-bind /scratch/exp/candidates/00003-delta/layer.py /scratch/exp/candidates/00003-delta/layer.py ${asiarch_binds[@]+"${asiarch_binds[@]}"} --as-pid-1 --info-fd 9 --chdir /scratch/exp/candidates/00003-delta/attempt-1 -- /opt/venv/bin/python -I -S -c 'import os,resource,signal,sys
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
sys.exit(rc)' 4096 /opt/venv/bin/python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node=2 -m asiarch.job.train /scratch/exp/candidates/00003-delta/attempt-1/spec.json 9>"$asiarch_run/info.json" &
asiarch_sandbox=$!
asiarch_forward() {  # to the sandbox's first process (torchrun), as bwrap reported its pid; else to bwrap
  # builtins only, no $(...): bash can misparse a command substitution a second signal interrupts
  # (seen: "unexpected EOF while looking for matching `)'", and the script died, taking the sandbox)
  local info="" pid=""
  read -r -d '' info < "$asiarch_run/info.json" 2>/dev/null || true
  [[ "$info" =~ \"child-pid\":\ *([0-9]+) ]] && pid="${BASH_REMATCH[1]}"
  kill -s "$1" "${pid:-$asiarch_sandbox}" 2>/dev/null || true
}
trap 'asiarch_forward TERM' TERM
trap 'asiarch_forward HUP' HUP
trap 'asiarch_forward INT' INT
# A trapped signal ends `wait` at once (status 128+N). One that comes while the previous one's trap
# runs ends the next `wait` at once too, with no trap run after it (bash 5.2; Slurm's TERM and the
# payload's come microseconds apart): a flag the trap sets then reads "not signalled", and the script
# exited 143, taking the sandbox down before the ranks had checkpointed. So whether the sandbox has
# ended is asked of its process; then `wait` returns its status (bash keeps an ended child's status).
while kill -0 "$asiarch_sandbox" 2>/dev/null; do
  wait "$asiarch_sandbox" || true
done
asiarch_rc=0
wait "$asiarch_sandbox" || asiarch_rc=$?
exit "$asiarch_rc"
