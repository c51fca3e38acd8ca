"""Run under mpirun -n P (with mpi4py): spa.attention and spa.layer with
comm=MPI.COMM_WORLD on each rank's shard equal one rank's result (bit for
bit outside the global rows), spa.attention_backward's dq, dk, dv of each
rank's shard equal one rank's (dq bit for bit outside the global rows; the
rest within 1e-5 of the largest gradient, as the sums of a key's gradient
over ranks run in another order); with exact=True, out, lse, dq, dk and
dv bit for bit everywhere; and a bad argument
raises ValueError on every rank without a hang. Prints 'mpi_check ok' on rank 0; exit 1 on
failure."""
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
# a fetch budget of 2 KiB (a block's K and V are 1 KiB): many batches, the same bits
fout, flse = spa.attention(q[:, t0:t1], k[:, t0:t1], v[:, t0:t1], comm=comm, fetch_mib=2 / 1024, **kw)
check(np.array_equal(fout, out) and np.array_equal(flse, lse), "out, lse change with fetch_mib")
if size > 1:
    check(max(x["batches"] for x in spa.plan(n, heads=H, dim=D, ranks=size, fetch_mib=2 / 1024, **kw)["per_rank"]) > 2,
          "a 2 KiB budget takes more than 2 batches")

dm = 12
x = rng.standard_normal((n, dm)).astype("f4")
wq, wk, wv = (0.3 * rng.standard_normal((H * D, dm)).astype("f4") for _ in range(3))
wo = 0.3 * rng.standard_normal((dm, H * D)).astype("f4")
bq = rng.standard_normal(H * D).astype("f4")
y = spa.layer(x[t0:t1], wq, wk, wv, wo, bq=bq, heads=H, comm=comm, **kw)
ref_y = spa.layer(x, wq, wk, wv, wo, bq=bq, heads=H, **kw)
check(np.allclose(y, ref_y[t0:t1], rtol=1e-5, atol=1e-6), "layer y differs from one rank's")

# gradients: the shards' against this process alone, on two patterns (the
# second without spread rows, with halo, strided and summary keys)
dout = rng.standard_normal((H, n, D)).astype("f4")
sl = (slice(None), slice(t0, t1))
for gkw, glob in ((kw, G), (dict(block=B, radius=20, causal=True, stride="7@1:2", summary="32:4",
                                 globals="none", seed=1), [])):
    out, lse = spa.attention(q[sl], k[sl], v[sl], comm=comm, **gkw)
    grads = spa.attention_backward(q[sl], k[sl], v[sl], out, lse, dout[sl], comm=comm, **gkw)
    ref_out, ref_lse = spa.attention(q, k, v, **gkw)
    refs = spa.attention_backward(q, k, v, ref_out, ref_lse, dout, **gkw)
    rows = np.array([i for i in range(t0, t1) if i not in glob], int)
    check(np.array_equal(grads[0][:, rows - t0], refs[0][:, rows]),
          "dq differs from one rank's off G (globals %s)" % (glob,))
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs):
        diff = float(np.abs(g - r[sl]).max(initial=0))
        scale = float(np.abs(r).max())
        check(diff <= 1e-5 * scale, "%s differs from one rank's by %.3g, largest |%s| %.3g (globals %s)"
              % (name, diff, name, scale, glob))
        print("rank %d %s: max |difference| %.3g of largest %.3g (globals %s)"
              % (rank, name, diff, scale, glob), flush=True)

# exact mode: the whole forward and backward bit for bit
ekw = dict(kw, exact=True)
out, lse = spa.attention(q[sl], k[sl], v[sl], comm=comm, **ekw)
grads = spa.attention_backward(q[sl], k[sl], v[sl], out, lse, dout[sl], comm=comm, **ekw)
ref_out, ref_lse = spa.attention(q, k, v, **ekw)
refs = spa.attention_backward(q, k, v, ref_out, ref_lse, dout, **ekw)
check(np.array_equal(out, ref_out[sl]) and np.array_equal(lse, ref_lse[sl]), "exact: out or lse differs")
check(np.array_equal(grads[1], refs[1][sl]) and np.array_equal(grads[2], refs[2][sl]), "exact: dk or dv differs")
check(np.array_equal(grads[0], refs[0][sl]), "exact: dq differs")


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
    raises(lambda: spa.attention_backward(q[:, a:b], k[:, a:b], v[:, a:b], q[:, a:b],
                                          np.zeros((H, b - a), "f4"), dout[:, a:b], comm=comm,
                                          block=B),
           ["spa.shard"], "backward: wrong shard")
    Hr = 1 if rank == 0 else 2
    raises(lambda: spa.attention(q[:Hr, t0:t1], k[:Hr, t0:t1], v[:Hr, t0:t1], comm=comm),
           ["disagree"], "heads differ between ranks")

# dout one row short on the last rank only: every rank raises
short = dout[:, t0:t1 - (1 if rank == size - 1 else 0)]
raises(lambda: spa.attention_backward(q[sl], k[sl], v[sl], out, lse, short, comm=comm, **gkw),
       ["one shape"], "backward: dout misshapen on one rank")

fails = comm.allreduce(len(fails))
if rank == 0:
    print("mpi_check ok" if fails == 0 else "mpi_check: %d failure(s)" % fails, flush=True)
sys.exit(0 if fails == 0 else 1)
