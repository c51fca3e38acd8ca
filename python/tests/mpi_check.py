"""Run under mpirun -n P (with mpi4py): spa.attention and spa.layer with
comm=MPI.COMM_WORLD on each rank's shard equal one rank's result (bit for
bit outside the global rows), and a bad argument raises ValueError on every
rank without a hang. Prints 'mpi_check ok' on rank 0; exit 1 on failure."""
import sys

import numpy as np
from mpi4py import MPI

import spa

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
        print("rank %d FAIL: %s" % (rank, what), flush=True)


rng = np.random.default_rng(1)
H, n, D, B = 2, 333, 8, 16
q, k, v = (rng.standard_normal((H, n, D)).astype("f4") for _ in range(3))
G = [0, 200]
kw = dict(block=B, random=2, seed=4, globals=G)
t0, t1 = spa.shard(n, block=B, comm=comm)
counts = comm.allgather(t1 - t0)
check(sum(counts) == n, "shards cover n: %s" % counts)

out, lse = spa.attention(q[:, t0:t1], k[:, t0:t1], v[:, t0:t1], comm=comm, **kw)
ref_out, ref_lse = spa.attention(q, k, v, **kw)  # this process alone (MPI_COMM_SELF)
rows = np.array([i for i in range(t0, t1) if i not in G], int)
check(np.array_equal(out[:, rows - t0], ref_out[:, rows]), "out differs from one rank's off G")
check(np.array_equal(lse[:, rows - t0], ref_lse[:, rows]), "lse differs from one rank's off G")
check(np.allclose(out, ref_out[:, t0:t1], rtol=1e-5, atol=1e-6), "out differs on G rows")

dm = 12
x = rng.standard_normal((n, dm)).astype("f4")
wq, wk, wv = (0.3 * rng.standard_normal((H * D, dm)).astype("f4") for _ in range(3))
wo = 0.3 * rng.standard_normal((dm, H * D)).astype("f4")
bq = rng.standard_normal(H * D).astype("f4")
y = spa.layer(x[t0:t1], wq, wk, wv, wo, bq=bq, heads=H, comm=comm, **kw)
ref_y = spa.layer(x, wq, wk, wv, wo, bq=bq, heads=H, **kw)
check(np.allclose(y, ref_y[t0:t1], rtol=1e-5, atol=1e-6), "layer y differs from one rank's")


def raises(fn, words, what):
    try:
        fn()
    except ValueError as e:
        check(all(w in str(e) for w in words), "%s: message %r lacks %s" % (what, str(e), words))
        return
    check(False, "%s: no ValueError" % what)


raises(lambda: spa.attention(q[:, t0:t1], k[:, t0:t1], v[:, t0:t1], comm=comm, local_blocks=2),
       ["--local-blocks"], "bad pattern")
raises(lambda: spa.attention(q[:, t0:t1], k[:, t0:t1], v[:, t0:t1], comm=comm, globals=[n + 5]),
       ["global"], "global out of range")
if size > 1:
    # rank 0 passes 16 rows too many, the last rank 16 too few: n is right, the shards are not
    a, b = t0 + (16 if rank == size - 1 else 0), t1 + (16 if rank == 0 else 0)
    raises(lambda: spa.attention(q[:, a:b], k[:, a:b], v[:, a:b], comm=comm, block=B),
           ["spa.shard"], "wrong shard")
    Hr = 1 if rank == 0 else 2
    raises(lambda: spa.attention(q[:Hr, t0:t1], k[:Hr, t0:t1], v[:Hr, t0:t1], comm=comm),
           ["disagree"], "heads differ between ranks")

fails = comm.allreduce(len(fails))
if rank == 0:
    print("mpi_check ok" if fails == 0 else "mpi_check: %d failure(s)" % fails, flush=True)
sys.exit(0 if fails == 0 else 1)
