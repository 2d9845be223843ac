"""Minimal reproduction, for a MindSpore report: the CPU graph runtime gives every intermediate its own buffer.

    python bench/ms_cpu_memory.py                 # 20 frozen MLP blocks, width 1280/5120, 2048 tokens
    python bench/ms_cpu_memory.py --blocks 4      # smaller, quicker

No toolkit code: a stack of frozen residual MLP blocks (Dense -> GELU -> Dense), the gradient taken to the
input only, each variant in its own process; each prints its peak resident memory beside the memory an
ideal runtime needs (the weights, plus one block's intermediates for the forward; plus the GELU inputs a
backward must keep, one per block). On MindSpore 2.8 CPU the graph-mode forward holds about every
intermediate of every block at once, forward + backward about three times that, PyNative frees as it
goes, and neither ``jit_level`` nor ``memory_optimize_level`` changes it; on Ascend graph mode reuses memory.
"""
import argparse
import json
import subprocess
import sys

from side_by_side import machine, peak_rss_gb

VARIANTS = {  # name: (mode, what, extra context settings)
    "graph forward": (0, "forward", {}),
    "graph forward+backward": (0, "backward", {}),
    "graph forward+backward, jit_level O2": (0, "backward", {"jit_config": {"jit_level": "O2"}}),
    "graph forward+backward, memory_optimize_level O1": (0, "backward", {"memory_optimize_level": "O1"}),
    "PyNative forward+backward": (1, "backward", {}),
    "PyNative, ms.jit per block, forward+backward": (1, "backward_jit_blocks", {}),
}


def run_variant(args):
    """One variant in this process; prints {"peak_gb": ...} as its last line."""
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    mode, what, extra = VARIANTS[args.variant]
    ms.set_context(mode=mode, **extra)
    ms.set_device("CPU")

    class Block(nn.Cell):
        def __init__(self):
            super().__init__()
            self.up = nn.Dense(args.width, 4 * args.width)
            self.down = nn.Dense(4 * args.width, args.width)
            self.act = nn.GELU(approximate=False)

        def construct(self, x):
            return x + self.down(self.act(self.up(x)))

    blocks = [Block() for _ in range(args.blocks)]
    if what == "backward_jit_blocks":
        for block in blocks:
            block.construct = ms.jit(block.construct)
    net = nn.SequentialCell(blocks)
    for p in net.get_parameters():
        p.requires_grad = False
    x = Tensor(np.random.default_rng(0).standard_normal((args.tokens, args.width)).astype(np.float32))
    class Total(nn.Cell):
        def __init__(self):
            super().__init__()
            self.net = net

        def construct(self, v):
            return self.net(v).sum()

    out = net(x) if what == "forward" else ops.grad(Total(), grad_position=0)(x)
    out.asnumpy()
    print(json.dumps({"peak_gb": peak_rss_gb()}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=20)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return run_variant(args)
    gb = 4 / 1024 ** 3
    weights = args.blocks * 2 * 4 * args.width * args.width * gb
    activation = args.tokens * 4 * args.width * gb  # one [tokens, 4 x width] fp32 tensor
    print(machine())
    print(f"{args.blocks} frozen MLP blocks, width {args.width}/{4 * args.width}, {args.tokens} tokens; weights "
          f"{weights:.2f} GB, one wide intermediate {activation * 1024:.0f} MB")
    print(f"ideal: forward {weights + 3 * activation:.2f} GB, forward+backward "
          f"{weights + (args.blocks + 3) * activation:.2f} GB (one GELU input kept per block)")
    base = [sys.executable, __file__, f"--blocks={args.blocks}", f"--width={args.width}", f"--tokens={args.tokens}"]
    for name in VARIANTS:
        out = subprocess.run(base + ["--variant", name], capture_output=True, text=True)
        if out.returncode:
            print(f"{name:52} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_gb"]
        print(f"{name:52} peak {peak:6.2f} GB")


if __name__ == "__main__":
    main()
