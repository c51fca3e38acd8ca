"""pytest for the Python binding: against the spa program's output on the
same input, at 1 and 3 ranks under mpirun (mpi_check.py), and error cases.

Environment: SPA_CLI (the spa program; default: the source tree's
build/spa), SPA_MPIEXEC (default: scripts/mpirun.sh), and what spa/__init__
needs to find libspa.so (SPA_LIBRARY, SPA_PREFIX or the build folder).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import spa

h5py = pytest.importorskip("h5py")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
CLI = os.environ.get("SPA_CLI", os.path.join(ROOT, "build", "spa"))
MPIEXEC = os.environ.get("SPA_MPIEXEC", "sh %s" % os.path.join(ROOT, "scripts", "mpirun.sh")).split()


def run_cli(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([CLI] + [str(a) for a in args], capture_output=True, text=True, timeout=60,
                       env=env)
    assert p.returncode == 0, p.stderr
    return p


def qkv(H=2, n=300, D=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((H, n, D)).astype("f4") for _ in range(3)]


PATTERNS = [
    ("default", {}, []),
    ("radius_causal", dict(block=16, radius=20, globals=[5, 150], random=1, causal=True, seed=2),
     ["--block", 16, "--radius", 20, "--globals", "5,150", "--random", 1, "--causal", "--seed", 2]),
    ("per_head", dict(block=16, local_blocks="3@0:1", stride="7@1:2", random=2, globals="none",
                      summary="32:4"),
     ["--block", 16, "--local-blocks", "3@0:1", "--stride", "7@1:2", "--random", 2, "--globals",
      "none", "--summary", "32:4"]),
]


@pytest.mark.parametrize("name,kw,flags", PATTERNS, ids=[p[0] for p in PATTERNS])
def test_attention_equals_cli(tmp_path, name, kw, flags):
    q, k, v = qkv(n=1000)  # 16 blocks of 64: room for the default random links
    inp, outp = tmp_path / "in.h5", tmp_path / "out.h5"
    with h5py.File(inp, "w") as f:
        f["q"], f["k"], f["v"] = q, k, v
    run_cli(["run", "--input", inp, "--output", outp, "--threads", 1] + flags)
    out, lse = spa.attention(q, k, v, threads=1, **kw)
    with h5py.File(outp, "r") as f:
        want_out, want_lse = f["out"][...], f["lse"][...]
    # one rank, one thread, the same library: the same bits
    assert np.array_equal(out, want_out), np.max(np.abs(out - want_out))
    assert np.array_equal(lse, want_lse)


def test_attention_2d_and_scale():
    q, k, v = qkv(H=1)
    out2, lse2 = spa.attention(q[0], k[0], v[0], scale=0.5)
    out3, lse3 = spa.attention(q, k, v, scale=0.5)
    assert out2.shape == (300, 16) and lse2.shape == (300,)
    assert np.array_equal(out2, out3[0]) and np.array_equal(lse2, lse3[0])


def test_layer_equals_cli(tmp_path):
    rng = np.random.default_rng(5)
    n, dm, H, D = 200, 24, 2, 8
    d = {"x": rng.standard_normal((n, dm)), "wq": rng.standard_normal((H * D, dm)) / 5,
         "wk": rng.standard_normal((H * D, dm)) / 5, "wv": rng.standard_normal((H * D, dm)) / 5,
         "wo": rng.standard_normal((dm, H * D)) / 5, "bq": rng.standard_normal(H * D),
         "bo": rng.standard_normal(dm)}
    d = {key: a.astype("f4") for key, a in d.items()}
    inp, outp = tmp_path / "layer.h5", tmp_path / "y.h5"
    with h5py.File(inp, "w") as f:
        for key, a in d.items():
            f[key] = a
    run_cli(["layer", "--input", inp, "--output", outp, "--heads", H, "--save-attention",
             "--block", 16, "--threads", 1])
    y, out, lse = spa.layer(d["x"], d["wq"], d["wk"], d["wv"], d["wo"], bq=d["bq"], bo=d["bo"],
                            heads=H, block=16, threads=1, return_attention=True)
    with h5py.File(outp, "r") as f:
        assert np.array_equal(y, f["y"][...])
        assert np.array_equal(out, f["out"][...])
        assert np.array_equal(lse, f["lse"][...])


@pytest.mark.parametrize("kw,words", [
    (dict(local_blocks=2), "--local-blocks"),
    (dict(globals=[10**6]), "global"),
    (dict(block=0), "block"),
    (dict(scale=-1.0), "scale"),
    (dict(random="x@0:1"), "random"),
    (dict(radius=5, local_blocks=5), "radius"),
])
def test_attention_bad_pattern(kw, words):
    q, k, v = qkv(n=100)
    with pytest.raises(ValueError, match="spa: .*" + words.replace("-", r"\-")):
        spa.attention(q, k, v, **kw)


def test_attention_bad_arrays():
    q, k, v = qkv(n=100)
    with pytest.raises(ValueError, match="one shape"):
        spa.attention(q, k[:, :50], v)
    with pytest.raises(ValueError, match="dimensions"):
        spa.attention(q[0, 0], k[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="numeric"):
        spa.attention(q.astype(str), k, v)
    with pytest.raises(ValueError, match="empty"):
        spa.attention(q[:, :0], k[:, :0], v[:, :0])


def test_layer_bad_weights():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 12)).astype("f4")
    w = rng.standard_normal((8, 12)).astype("f4")
    with pytest.raises(ValueError, match="wo has shape"):
        spa.layer(x, w, w, w, w, heads=2)
    with pytest.raises(ValueError, match="bk has shape"):
        spa.layer(x, w, w, w, w.T, bk=np.zeros(3), heads=2)
    with pytest.raises(ValueError, match="multiple of heads"):
        spa.layer(x, w, w, w, w.T, heads=3)
    with pytest.raises(ValueError, match="heads"):
        spa.layer(x, w, w, w, w.T, heads=0)
    # the interpreter is still fine after every error
    assert spa.layer(x, w, w, w, w.T, heads=2).shape == (64, 12)


@pytest.mark.parametrize("np_", [1, 3])
def test_mpi(np_):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.join(HERE, ".."), os.environ.get("PYTHONPATH", "")]))
    cmd = MPIEXEC + ["-n", str(np_), sys.executable, os.path.join(HERE, "mpi_check.py")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    print(p.stdout, p.stderr)
    assert p.returncode == 0 and "mpi_check ok" in p.stdout


def _mask_from_attention(n, kw, H=2):
    """S(i) of every head, from spa.attention itself: with q = 0 every key
    in S(i) gets the same weight, and with v = I (dim = n) out[h, i, j] is
    1 / |S(i)| for j in S(i) and exactly 0 elsewhere."""
    q = np.zeros((H, n, n), np.float32)
    v = np.broadcast_to(np.eye(n, dtype=np.float32), (H, n, n)).copy()
    out, _ = spa.attention(q, q, v, threads=1, **kw)
    return out != 0


def _bfs_hops(adj):
    """spa.plan's hop figures (every block a source) by BFS on adj[c, b]."""
    nb = adj.shape[0]
    hist, pairs, reach, dmax, dsum = [0] * 16, 0, 0, 0, 0
    for s in range(nb):
        dist = {s: 0}
        frontier = [s]
        while frontier:
            nxt = []
            for c in frontier:
                for b in np.flatnonzero(adj[c]):
                    if b not in dist:
                        dist[b] = dist[c] + 1
                        nxt.append(b)
            frontier = nxt
        pairs += nb - 1
        for b, d in dist.items():
            if b != s:
                reach += 1
                dsum += d
                dmax = max(dmax, d)
                hist[min(d, 15)] += 1
    return {"pairs": pairs, "reachable": reach, "max": dmax, "mean": dsum / reach if reach else 0.0,
            "histogram": hist}


PLAN_PATTERNS = [
    ("bigbird", dict(block=16, random=2, seed=3)),
    ("causal_radius", dict(block=16, radius=20, globals=[5, 150], random=1, causal=True, seed=2)),
    ("per_head", dict(block=16, local_blocks="3@0:1", stride="7@1:2", random=2, globals="none",
                      summary="32:4")),
]


@pytest.mark.parametrize("name,kw", PLAN_PATTERNS, ids=[p[0] for p in PLAN_PATTERNS])
def test_plan_equals_attention(name, kw):
    """spa.plan's key counts, block mask and hops against the pattern that
    spa.attention computes with, token by token."""
    n, H, B = 248, 2, 16  # 16 blocks, the last one partial
    att = _mask_from_attention(n, kw, H)
    nb = -(-n // B)
    r = spa.plan(n, heads=H, dim=n, **kw)
    counts = att.sum(axis=2)
    assert (r["keys_min"], r["keys_max"], r["pairs"]) == (counts.min(), counts.max(), counts.sum())
    assert r["flops"] == 4.0 * n * counts.sum()
    for h in range(H):
        pad = np.zeros((nb * B, nb * B), bool)
        pad[:n, :n] = att[h]
        adj = pad.reshape(nb, B, nb, B).any(axis=(1, 3))
        m = spa.plan(n, heads=H, dim=n, mask=nb, head=h, **kw)
        assert m["blocks_per_pixel"] == 1 and m["mask"].shape == (nb, nb)
        assert np.array_equal(m["mask"] != 0, adj)
        # downsampled by 3 blocks a pixel: a pixel is set iff a pair in it is
        m3 = spa.plan(n, heads=H, dim=n, mask=6, head=h, **kw)
        side = -(-nb // 3)
        pad3 = np.zeros((side * 3, side * 3), bool)
        pad3[:nb, :nb] = adj
        assert m3["blocks_per_pixel"] == 3
        assert np.array_equal(m3["mask"] != 0, pad3.reshape(side, 3, side, 3).any(axis=(1, 3)))
        got = spa.plan(n, heads=H, dim=n, hops=True, head=h, **kw)["hops"]
        want = _bfs_hops(adj)
        assert got["sources"] == nb and not got["sampled"]
        for f in ("pairs", "reachable", "max", "histogram"):
            assert got[f] == want[f], (h, f)
        assert abs(got["mean"] - want["mean"]) < 1e-12


@pytest.mark.parametrize("P,mib", [(1, None), (3, None), (7, None), (3, 1)])
def test_plan_ranks_equal_cli(P, mib):
    """spa.plan(ranks=P) against `spa plan --ranks P --json`, rank by rank
    (with a fetch budget of 1 MiB: 3 batches a rank)."""
    kw, flags = dict(PATTERNS[1][1]), list(PATTERNS[1][2])
    if mib is not None:
        kw["fetch_mib"], flags = mib, flags + ["--fetch-mib", mib]
    r = spa.plan(4096, heads=3, dim=32, ranks=P, **kw)
    assert (mib is not None) == any(x["batches"] > 1 for x in r["per_rank"])
    import json
    want = json.loads(run_cli(["plan", "--n", 4096, "--heads", 3, "--dim", 32, "--ranks", P, "--json"]
                              + flags).stdout)
    for f in ("blocks", "keys_min", "keys_max", "pairs", "flops", "bytes_halo", "bytes_global",
              "bytes_rma", "bytes_halo_total", "bytes_global_total", "bytes_rma_total"):
        assert r[f] == want[f], f
    assert r["density"] == pytest.approx(want["density"], rel=1e-8)
    assert len(r["per_rank"]) == P
    for mine, theirs in zip(r["per_rank"], want["per_rank"]):
        for f in theirs:
            assert mine[f] == theirs[f], (mine["rank"], f)
        assert mine["batches"] >= 1 and mine["fetched_blocks"] >= 0
    assert r["per_rank"][0]["block_begin"] == 0 and r["per_rank"][-1]["block_end"] == r["blocks"]
    # without the key counts: the same bytes, and no key fields
    lean = spa.plan(4096, heads=3, dim=32, ranks=P, keys=False, **kw)
    assert lean["per_rank"] == r["per_rank"] and "pairs" not in lean and "flops" not in lean


def test_plan_bad_arguments():
    with pytest.raises(ValueError, match="head 2 is not in"):
        spa.plan(1024, heads=2, hops=True, head=2)
    with pytest.raises(ValueError, match="ranks must be"):
        spa.plan(1024, ranks=0)
    with pytest.raises(ValueError, match="local-blocks must be odd"):
        spa.plan(1024, local_blocks=2)
    for bad in (-1, "x", float("nan")):
        with pytest.raises(ValueError, match="fetch_mib must be a number >= 0"):
            spa.plan(1024, fetch_mib=bad)
