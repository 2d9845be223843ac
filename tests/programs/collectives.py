"""gm.parallel's mean and any across the processes of an mpirun job, in PyNative and graph mode: one JSON line
per mode and rank. A file, not a string: graph mode reads the source of the main script. Used by
tests/test_parallel.py."""
import json
import numpy as np
import mindspore as ms
from mindspore import Tensor
from gm.parallel import init_parallel

ms.set_device("CPU")
p = init_parallel(True)
for mode in (1, 0):
    ms.set_context(mode=mode)
    a, b = p.mean((Tensor(np.full((2, 3), p.rank + 1, np.float32)), Tensor(np.float32(10 * p.rank))))
    print(json.dumps({"mode": mode, "rank": p.rank, "world": p.world_size, "main": p.is_main,
                      "a": a.asnumpy().tolist(), "b": float(b.asnumpy()), "dtype": str(a.dtype),
                      "any_rank1": p.any(p.rank == 1), "any_none": p.any(False)}), flush=True)
