"""Files a job can write, planted to turn the head against its own user: a link (or a FIFO) where the head reads
the job's log, progress record, result or exit record, or where it writes the next attempt's files and the stop
request. Each attack is shown doing its harm through the plain file calls the head used before (the defence off),
then refused. Real files, a real HDF5 result, a real FIFO."""

import json
import os
import threading

import pytest

from asiarch.dispatch.attempt import write_attempt_files
from asiarch.config import ClusterConfig, TrainConfig
from asiarch.job import contract
from asiarch.job import result as rf
from asiarch.job.contract import AttemptFiles, PlantedFileError, atomic_write, read_job_file
from asiarch.search.ingest import log_tail

SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- canary-5f2a"


@pytest.fixture
def planted(tmp_path):
    """A user's private file, and an attempt directory whose job is gone."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text(SECRET + "\n")
    files = AttemptFiles(tmp_path / "exp" / "candidates" / "00001-x" / "attempt-1")
    files.dir.mkdir(parents=True)
    return key, files


def test_a_log_linked_to_a_private_file_is_not_read(planted):
    key, files = planted
    files.log.symlink_to(key)
    assert SECRET in files.log.read_text()  # what the head's log tail read before: into the store, report, LLM
    tail = log_tail(files.log)
    assert SECRET not in tail and "symbolic link" in tail and "not read" in tail
    with pytest.raises(PlantedFileError, match="symbolic link"):
        read_job_file(files.log)


def test_a_fifo_for_a_log_does_not_hang_the_head(planted):
    _, files = planted
    os.mkfifo(files.log)
    out = {}
    reader = threading.Thread(target=lambda: out.setdefault("tail", log_tail(files.log)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "the head blocked on a FIFO the job left as its log"
    assert "not a regular file" in out["tail"]


def test_a_log_tail_reads_only_the_end_of_a_huge_log(planted):
    _, files = planted
    with open(files.log, "wb") as f:
        f.write(b"x" * (8 << 20) + b"\nlast line\n")
    assert log_tail(files.log, 1) == "last line"
    assert len(read_job_file(files.log, tail=1000)) == 1000


def test_a_progress_record_or_an_exit_record_linked_elsewhere_is_not_read(planted, tmp_path):
    key, files = planted
    elsewhere = tmp_path / "progress-elsewhere.json"
    elsewhere.write_text(json.dumps({"step": 99, "loss": 0.0}))
    files.progress.symlink_to(elsewhere)
    assert json.loads(files.progress.read_text())["step"] == 99  # the old read followed it
    assert rf.read_progress(files.progress) is None
    files.job_exit.symlink_to(key)
    with pytest.raises(PlantedFileError):
        read_job_file(files.job_exit)


def test_a_result_linked_to_another_file_is_refused(planted, tmp_path):
    _, files = planted
    real = tmp_path / "someone-elses.h5"
    rf.write_result(real, rf.ResultRecord(experiment="e", candidate_id=1, attempt=1, run_key="k", code_sha256="s",
                                          status="ok", config={}, env={}, curve=rf.Curve(), steps_done=1,
                                          tokens_per_s=1.0, started_at=0.0, finished_at=1.0))
    files.result.symlink_to(real)
    assert rf.read_result(real).status == "ok"  # h5py follows the link: the old read took this result as the job's
    with pytest.raises(rf.ResultFileError, match="symbolic link"):
        rf.read_result(files.result)


def test_the_head_never_writes_through_a_link_swapped_in_for_its_temporary_file(tmp_path, monkeypatch):
    """A running job can watch its attempt directory and swap the head's new stop request (a fresh temporary file)
    for a link to a file of its user's before the head writes it."""
    victim = tmp_path / "bashrc"
    victim.write_text("# the user's\n")
    target = tmp_path / "attempt-1" / "stop.json"
    target.parent.mkdir()
    real_temp = contract._temp_beside

    def swapped(path):  # what the racing job does between the head's create and its write
        tmp = real_temp(path)
        tmp.unlink()
        tmp.symlink_to(victim)
        return tmp

    monkeypatch.setattr(contract, "_temp_beside", swapped)
    with contract.atomic_path(target) as tmp:  # the writers that open the path themselves follow the link
        tmp.write_text('{"reason": "rung"}')
    assert victim.read_text() == '{"reason": "rung"}'  # the attack, on a writer that opens by name
    victim.write_text("# the user's\n")
    with pytest.raises(OSError):
        atomic_write(target, '{"reason": "rung"}')
    assert victim.read_text() == "# the user's\n"
    assert not any(p.name.endswith(".tmp") for p in target.parent.iterdir())  # the temporary link is removed


def test_a_linked_attempt_directory_is_refused_and_checkpoints_live_apart(tmp_path):
    """An earlier version's job could write its candidate's directory and plant ``attempt-2 -> ../..``: the head
    then wrote the next attempt's files into the experiment directory and bound it writable."""
    exp = tmp_path / "exp"
    cand = exp / "candidates" / "00001-x"
    (cand / "attempt-1").mkdir(parents=True)
    layer = cand / "layer.py"
    layer.write_text("# layer\n")
    (cand / "checkpoint.pt").write_bytes(b"an earlier version's checkpoint")
    kw = dict(layer_path=layer, train=TrainConfig(), cluster=ClusterConfig(sandbox="none"), class_name="DeltaNet",
              python="python3", bind_root=exp)
    ident = {"experiment": "e", "candidate_id": 1, "attempt": 2, "run_key": "e-c00001-a2", "code_sha256": "s"}
    (cand / "attempt-2").symlink_to("../..")
    with pytest.raises(PlantedFileError, match="attempt-2 is a symbolic link"):
        write_attempt_files(AttemptFiles(cand / "attempt-2"), identity=ident, **kw)
    assert not (exp / "spec.json").exists() and not (exp / "job.sh").exists()

    (cand / "attempt-2").unlink()
    write_attempt_files(AttemptFiles(cand / "attempt-2"), identity=ident, **kw)
    spec = json.loads((cand / "attempt-2" / "spec.json").read_text())
    assert spec["checkpoint_path"] == str((cand / "checkpoints" / "checkpoint.pt").resolve())
    assert (cand / "checkpoints" / "checkpoint.pt").read_bytes() == b"an earlier version's checkpoint"  # moved in


def test_a_checkpoint_linked_elsewhere_is_removed_and_never_widens_the_sandbox(tmp_path):
    """A job may write its candidate's checkpoints/: a link there named as the next attempt's checkpoint, resolved,
    made that attempt's sandbox bind the link's target directory writable (a red team's find: ~/.ssh)."""
    from asiarch.dispatch import sandbox as sb

    if sb.bwrap_problem():
        pytest.skip(f"bubblewrap cannot run here: {sb.bwrap_problem()}")
    exp = tmp_path / "exp"
    cand = exp / "candidates" / "00001-x"
    layer = cand / "layer.py"
    victim = tmp_path / "victim"
    victim.mkdir()
    cand.mkdir(parents=True)
    layer.write_text("# layer\n")
    kw = dict(layer_path=layer, train=TrainConfig(), cluster=ClusterConfig(sandbox="bwrap"), class_name="DeltaNet",
              python="python3", bind_root=exp)
    write_attempt_files(AttemptFiles(cand / "attempt-1"), identity={
        "experiment": "e", "candidate_id": 1, "attempt": 1, "run_key": "e-c00001-a1", "code_sha256": "s"}, **kw)
    (cand / "checkpoints" / "checkpoint.pt").symlink_to(victim / "anything")  # what the job plants
    assert str(victim) in os.path.realpath(cand / "checkpoints" / "checkpoint.pt")  # resolving follows it
    ident = {"experiment": "e", "candidate_id": 1, "attempt": 2, "run_key": "e-c00001-a2", "code_sha256": "s"}
    write_attempt_files(AttemptFiles(cand / "attempt-2"), identity=ident, **kw)  # the head goes on: no exception
    assert not (cand / "checkpoints" / "checkpoint.pt").is_symlink() and list(victim.iterdir()) == []
    script = (cand / "attempt-2" / "job.sh").read_text()
    assert str(victim) not in script and f"--bind {(cand / 'checkpoints').resolve()} " in script
