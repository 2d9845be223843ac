"""Data parallelism: which process this is and how gradients are combined across processes.

Start N processes with OpenMPI's ``mpirun -n N`` or MindSpore's ``msrun --worker_num N
--local_worker_num N`` and call :func:`init_parallel` (``--is_parallel True``) before building
anything: it joins them into one MindSpore process group (MindSpore's own collectives on CPU,
NCCL on GPU, HCCL on Ascend) and returns a :class:`DataParallel`.

MindSpore forms the group through a scheduler process and the variables ``MS_ROLE``,
``MS_WORKER_NUM``, ``MS_NODE_ID``, ``MS_SCHED_HOST`` and ``MS_SCHED_PORT``. msrun sets them and
starts the scheduler itself. Under mpirun they are derived from OpenMPI's: rank r is worker r of
``OMPI_COMM_WORLD_SIZE``, and rank 0 starts the scheduler as a child process listening on
``MS_SCHED_HOST`` (default 127.0.0.1; for several nodes pass rank 0's address with
``mpirun -x MS_SCHED_HOST=...``) and ``MS_SCHED_PORT`` (default 10000 + OpenMPI's job id modulo
20000, so concurrent jobs differ); its log is ``gm_scheduler_{port}.log`` in the temp folder. A
launch with an Ascend rank table (``RANK_TABLE_FILE``) is left to MindSpore.

Failures end in bounded time, through two MindSpore timeouts in seconds, set here when the
environment does not already give them: ``MS_TOPO_TIMEOUT`` (90) for every process to join, and
``MS_NODE_TIMEOUT`` (90) for a collective to wait for a process that died or hangs (also the
scheduler's heartbeat limit). Only rank 0 saves and samples while the others wait in the next
collective: raise ``MS_NODE_TIMEOUT`` when that takes longer (sampling the full model on CPU).
"""
import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.communication import get_group_size, get_rank, init

from gm.errors import ParallelError

TIMEOUTS = {"MS_TOPO_TIMEOUT": "90", "MS_NODE_TIMEOUT": "90"}
# MindSpore's scheduler for an mpirun job. It ignores SIGTERM, which mpirun sends to rank 0's
# process group when stopping a job, so that the ranks can finish their step and leave the group
# cleanly; mpirun's SIGKILL after that still ends it.
SCHEDULER = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "signal.signal(signal.SIGINT, signal.SIG_IGN); "
             "import mindspore as ms; ms.set_device('CPU'); from mindspore.communication import init; init()")


def _broken_group(message):
    """ParallelError for a process group that failed. The process will then exit without
    MindSpore's teardown, which would wait for the lost processes and end in its own SIGTERM."""
    def exit_now():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    atexit.register(exit_now)
    return ParallelError(message)


class SingleProcess:
    """One process: rank 0 of 1; combining across processes is the identity."""

    rank = 0
    world_size = 1
    is_main = True

    @staticmethod
    def mean(tensors):
        """Element-wise mean of each tensor over the processes."""
        return tuple(tensors)

    @staticmethod
    def any(flag):
        """True if ``flag`` is set on any process."""
        return bool(flag)


class AllReduceSum(nn.Cell):
    """Element-wise sum over the processes of the group."""

    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce()

    def construct(self, x):
        return self.all_reduce(x)


class DataParallel:
    """This process in a group formed by :func:`init_parallel`; collectives over the whole group.

    ``mean`` and ``any`` are collectives: every process must call them in the same order. A
    process that died or cannot be reached makes them raise :class:`ParallelError` (after at
    most ``MS_NODE_TIMEOUT`` seconds).
    """

    def __init__(self, rank, world_size):
        self.rank = rank
        self.world_size = world_size
        self.is_main = rank == 0
        self._sum = AllReduceSum()

    def _reduce(self, flat, what):
        try:
            return self._sum(Tensor(flat)).asnumpy()
        except RuntimeError:
            raise _broken_group(
                f"rank {self.rank}: lost the other processes while {what} (one died, hung for more than "
                f"MS_NODE_TIMEOUT={os.environ.get('MS_NODE_TIMEOUT')} s, or the network failed); the "
                "checkpoints saved so far are kept") from None

    def mean(self, tensors):
        """Element-wise mean of each tensor over the processes (one all-reduce for all of them)."""
        arrays = [t.asnumpy() for t in tensors]
        flat = np.concatenate([a.astype(np.float32).ravel() for a in arrays])
        total = self._reduce(flat, "averaging gradients") / np.float32(self.world_size)
        ends = np.cumsum([a.size for a in arrays])[:-1]
        return tuple(Tensor(part.reshape(a.shape).astype(a.dtype), dtype=t.dtype)
                     for part, a, t in zip(np.split(total, ends), arrays, tensors))

    def any(self, flag):
        """True if ``flag`` is set on any process."""
        return bool(self._reduce(np.array([float(bool(flag))], np.float32), "checking for a stop request")[0] > 0)


def _launcher():
    """(name, world size) of the launcher that started this process, or (None, 1)."""
    env = os.environ
    if env.get("MS_ROLE"):
        return "msrun", int(env.get("MS_WORKER_NUM", "1"))
    if env.get("RANK_TABLE_FILE") or env.get("MINDSPORE_HCCL_CONFIG_PATH"):
        return "rank table", int(env.get("RANK_SIZE") or env.get("OMPI_COMM_WORLD_SIZE") or "1")
    if env.get("OMPI_COMM_WORLD_SIZE"):
        return "mpirun", int(env["OMPI_COMM_WORLD_SIZE"])
    return None, 1


def _scheduler_address():
    """(host, port) of the scheduler of an mpirun job."""
    env = os.environ
    host = env.get("MS_SCHED_HOST")
    if not host:
        if env.get("OMPI_COMM_WORLD_LOCAL_SIZE", env["OMPI_COMM_WORLD_SIZE"]) != env["OMPI_COMM_WORLD_SIZE"]:
            raise ParallelError("mpirun over several nodes: give the address of rank 0's node to every "
                                "process, e.g. mpirun -x MS_SCHED_HOST=10.0.0.1 ...")
        host = "127.0.0.1"
    port = env.get("MS_SCHED_PORT") or str(10000 + int(env.get("OMPI_MCA_ess_base_jobid", "0")) % 20000)
    return host, port


def _start_scheduler(host, port):
    """Rank 0 of an mpirun job: MindSpore's scheduler as a child process, its log in the temp folder.

    It ends by itself once every worker has left, or MS_NODE_TIMEOUT after one vanished.
    """
    try:
        with socket.socket() as probe:
            probe.bind((host, int(port)))
    except OSError as e:
        raise ParallelError(f"cannot listen on {host}:{port} for MindSpore's scheduler ({e.strerror or e}); "
                            "pick a free port with mpirun -x MS_SCHED_PORT=...") from None
    log = os.path.join(tempfile.gettempdir(), f"gm_scheduler_{port}.log")
    env = {**os.environ, "MS_ROLE": "MS_SCHED"}
    env.pop("MS_NODE_ID")
    with open(log, "w") as out:
        subprocess.Popen([sys.executable, "-c", SCHEDULER], env=env, stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT)
    return log


def _bridge_openmpi():
    """MindSpore's cluster variables from OpenMPI's; the scheduler on rank 0. Returns its log path."""
    host, port = _scheduler_address()
    rank = os.environ["OMPI_COMM_WORLD_RANK"]
    os.environ.update(MS_ROLE="MS_WORKER", MS_WORKER_NUM=os.environ["OMPI_COMM_WORLD_SIZE"], MS_NODE_ID=rank,
                      MS_SCHED_HOST=host, MS_SCHED_PORT=port)
    return _start_scheduler(host, port) if rank == "0" else None


def _wait_for_scheduler(host, port, seconds):
    """Return once the scheduler accepts connections; ParallelError after ``seconds``.

    MindSpore's own retries after a refused registration can keep failing for tens of seconds,
    so a worker registers only once the scheduler listens.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ParallelError(f"cannot reach MindSpore's scheduler at {host}:{port} within MS_TOPO_TIMEOUT="
                                    f"{seconds:g} s: is rank 0 running, and MS_SCHED_HOST/MS_SCHED_PORT right?") \
                    from None
            time.sleep(0.2)


def init_parallel(enabled):
    """:class:`SingleProcess`, or (``enabled``) this process joined to the others of its launch.

    Call it after choosing the device and before creating any tensor. Raises :class:`ParallelError`
    for a launch that does not match ``enabled`` or a group that cannot be formed in
    ``MS_TOPO_TIMEOUT`` seconds.
    """
    launcher, size = _launcher()
    if not enabled:
        if size > 1:
            raise ParallelError(f"started by {launcher} as one of {size} processes: add --is_parallel True "
                                "(else every process would train alone and write the same files)")
        return SingleProcess()
    if launcher is None:
        raise ParallelError("--is_parallel True: start the processes with mpirun -n N python ... or "
                            "msrun --worker_num N --local_worker_num N ... (see README, Data-parallel training)")
    for key, value in TIMEOUTS.items():
        os.environ.setdefault(key, value)
    scheduler_log = _bridge_openmpi() if launcher == "mpirun" else None
    role = os.environ.get("MS_ROLE")
    host, port = os.environ.get("MS_SCHED_HOST", "127.0.0.1"), os.environ.get("MS_SCHED_PORT", "8118")
    if role == "MS_WORKER":
        _wait_for_scheduler(host, port, float(os.environ["MS_TOPO_TIMEOUT"]))
    try:
        init()
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[0]
        if role == "MS_SCHED":
            raise _broken_group(f"MindSpore's scheduler: {detail}") from None
        if role is None:
            raise _broken_group(f"could not start the rank-table job: {detail}") from None
        raise _broken_group(
            f"could not form the group of {size} processes at the scheduler {host}:{port} within MS_TOPO_TIMEOUT="
            f"{os.environ['MS_TOPO_TIMEOUT']} s: a process failed to start or cannot reach it"
            + (f" (scheduler log: {scheduler_log})" if scheduler_log else "")) from None
    if role == "MS_SCHED":
        sys.exit(0)
    return DataParallel(get_rank(), get_group_size())
