"""Shared by the benchmarks: each side (ours, diffusers) in its own process of the calling script."""
import json
import os
import platform
import resource
import subprocess
import sys


def peak_rss_gb():
    """Peak resident memory of this process so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def machine():
    """The CPU and its vector extensions that matter for the kernels (speed figures depend on them)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        found = " ".join(f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    except (OSError, StopIteration):
        found = platform.processor() or "unknown"
    return f"CPU: {platform.machine()} [{found}], {os.cpu_count()} cores"


def run_sides(script, args):
    """{"ours": ..., "diffusers": ...}: ``script --which SIDE`` with every other flag of ``args``, one side
    after the other; each child prints its result as JSON on its last line. Exits if a side fails."""
    results = {}
    for which in ("ours", "diffusers"):
        cmd = [sys.executable, script, "--which", which] + [f"--{k}={v}" for k, v in vars(args).items()
                                                              if k != "which"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    return results
