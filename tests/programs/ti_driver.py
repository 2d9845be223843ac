"""train_textual_inversion.py's real command line, run as a launcher runs it (mpirun, msrun, by hand), plus:
each rank writes its pid to $PID_DIR (failure tests) and prints a digest of its learned rows at the end
(every rank must end with the same vectors). Used by tests/test_parallel.py."""
import hashlib, os, runpy, sys
from gm.textual_inversion import trainer

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "train_textual_inversion.py")

rank = os.environ.get("OMPI_COMM_WORLD_RANK") or os.environ.get("MS_NODE_ID")
if os.environ.get("PID_DIR") and os.environ.get("MS_ROLE") != "MS_SCHED":
    with open(os.path.join(os.environ["PID_DIR"], f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
run = trainer.Trainer.run


def run_and_report(self):
    step = run(self)
    rows = b"".join(p.asnumpy().tobytes() for p in self.params)
    print(f"final rows of rank {self.parallel.rank}: {hashlib.sha256(rows).hexdigest()}", flush=True)
    return step


trainer.Trainer.run = run_and_report
sys.argv = [SCRIPT, *sys.argv[1:]]
runpy.run_path(SCRIPT, run_name="__main__")
