"""Data-parallel training throughput: 1 process against 2 processes (mpirun) of 1 thread each.

    python bench/parallel.py                      # tiny config, 64 px, batch 1 per process, graph mode
    python bench/parallel.py --steps 40 --resolution 128 --batch 2

Every run is the real trainer (train_textual_inversion.py) on random weights and datasets/demo_toy.
Throughput is images per second from the median wall-clock time between the starts of
consecutive steps after the first --warmup (compilation, caches), on rank 0; a step of the
2-process run includes averaging the gradients. Scaling efficiency = (2-process images/s) /
(2 x 1-process images/s), both 1 thread per process; a 1-process run with 2 threads shows the
other way to use the same two cores. Other work on a shared machine skews these wall-clock figures
(the load average is printed); the CPU time per image (all threads of all processes) is much less
sensitive to it, and its ratio shows the work data parallelism adds.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from side_by_side import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_textual_inversion.py")

# Sets the thread count, records when each step starts (wall clock and this process's CPU time)
# and prints those times from every rank.
DRIVER = f"""
import json, os, runpy, sys, time
import mindspore as ms
ms.device_context.cpu.op_tuning.threads_num(int(os.environ["BENCH_THREADS"]))
from gm.textual_inversion import trainer

starts, cpu = [], []
train_step, run = trainer.Trainer.train_step, trainer.Trainer.run


def timed_step(self, step):
    starts.append(time.perf_counter())
    cpu.append(time.process_time())
    return train_step(self, step)


def run_and_report(self):
    result = run(self)
    print("BENCH " + json.dumps({{"rank": self.parallel.rank, "world": self.parallel.world_size,
                                 "starts": starts, "cpu": cpu}}), flush=True)
    return result


trainer.Trainer.train_step, trainer.Trainer.run = timed_step, run_and_report
sys.argv = [{SCRIPT!r}, *sys.argv[1:]]
runpy.run_path({SCRIPT!r}, run_name="__main__")
"""


def train_args(args, save):
    return ["--config", args.config, "--weight", args.weight, "--device_target", "CPU",
            "--data_path", os.path.join(ROOT, "datasets", "demo_toy"), "--save_path", save,
            "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
            "--total_step", str(args.warmup + args.steps + 1), "--save_ckpt_interval", "1000000",
            "--ms_mode", str(args.ms_mode)]


def measure(args, driver, work, processes, threads):
    """{"images/s", "s/step", "CPU s/image"} of one run."""
    save = os.path.join(work, f"run_{processes}x{threads}")
    env = {**os.environ, "BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    command = [sys.executable, driver, *train_args(args, save)]
    if processes > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            sys.exit("mpirun not found: install OpenMPI (Debian/Ubuntu: apt-get install openmpi-bin)")
        command = [mpirun, "-n", str(processes), *command, "--is_parallel", "True"]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{processes} x {threads} failed:\n{result.stderr[-3000:]}")
    reports = {r["rank"]: r for r in (json.loads(line[6:]) for line in result.stdout.splitlines()
                                      if line.startswith("BENCH "))}
    starts = reports[0]["starts"][args.warmup:]
    seconds = statistics.median(b - a for a, b in zip(starts, starts[1:]))
    cpu = sum((r["cpu"][-1] - r["cpu"][args.warmup]) / (len(r["cpu"]) - 1 - args.warmup) for r in reports.values())
    images = args.batch * processes
    return {"images/s": images / seconds, "s/step": seconds, "CPU s/image": cpu / images}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config",
                        default=os.path.join(ROOT, "configs/training/sd_xl_tiny_finetune_textual_inversion.yaml"))
    parser.add_argument("--weight", default=None, help="weights (default: random ones for --config, written once)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1, help="images per process per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--ms_mode", type=int, default=0, help="0 graph, 1 PyNative")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        if args.weight is None:
            sys.path.insert(0, ROOT)
            from gm.checkpoints.random_weights import write_random_checkpoint

            args.weight = os.path.join(work, "weights.safetensors")
            write_random_checkpoint(args.config, args.weight, seed=0)
        driver = os.path.join(work, "driver.py")
        with open(driver, "w") as f:
            f.write(DRIVER)
        runs = {(p, t): measure(args, driver, work, p, t) for p, t in ((1, 1), (2, 1), (1, 2))}
    print(machine())
    print(f"Textual-inversion training, {os.path.basename(args.config)}, {args.resolution}x{args.resolution} px, "
          f"batch {args.batch} per process, {'graph' if args.ms_mode == 0 else 'PyNative'} mode, "
          f"{os.cpu_count()} CPUs, {args.steps} timed steps, load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"{'':34}{'images/s':>10}{'s/step':>10}{'CPU s/image':>13}")
    for (p, t), label in (((1, 1), "1 process x 1 thread"), ((2, 1), "2 processes x 1 thread (mpirun)"),
                          ((1, 2), "1 process x 2 threads")):
        r = runs[p, t]
        print(f"{label:34}{r['images/s']:10.2f}{r['s/step']:10.3f}{r['CPU s/image']:13.3f}")
    one, two = runs[1, 1], runs[2, 1]
    print(f"scaling efficiency, 2 processes against 2 x 1 process: {two['images/s'] / (2 * one['images/s']):.0%} "
          f"(CPU time per image: {one['CPU s/image'] / two['CPU s/image']:.0%})")


if __name__ == "__main__":
    main()
