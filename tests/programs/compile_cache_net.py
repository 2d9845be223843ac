"""A small graph-mode network under gm.compile_cache: ``compile_cache_net.py FOLDER ROWS`` prints one JSON line
with the cache entry used (or None), whether it held graphs already, and the output for a [ROWS, 4] input,
whose exact value is known (every column: the sum of 0 .. 4 ROWS - 1). A file, not a string: graph mode
reads the source of the main script. Used by tests/test_compile_cache.py."""
import json
import sys

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from gm.compile_cache import use_compile_cache


class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(4, 3, weight_init="ones", bias_init="zeros")

    def construct(self, x):
        return self.dense(x).sum(axis=0)


folder, rows = sys.argv[1], int(sys.argv[2])
ms.set_context(mode=0)
ms.set_device("CPU")
cache = use_compile_cache(None if folder == "off" else folder, {"rows": rows})
out = Net()(Tensor(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)))
print(json.dumps({"entry": cache.entry if cache else None, "reused": bool(cache and cache.reused),
                  "out": out.asnumpy().tolist()}))
