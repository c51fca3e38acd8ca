"""spa's gradients beside PyTorch autograd through dense masked
scaled_dot_product_attention, on the same inputs (issue 11, peers). Run by
bench/peers_grad.sh inside bench/peers.sh's virtual environment.

For each n (<= 8192: the dense [H, n, n] mask must fit): `spa gen --grad`
writes q, k, v and dout; `spa run` writes out and lse; `spa grad` times the
backward pass alone (out and lse stored) and writes dq, dk, dv. PyTorch
gets the same tensors, the boolean mask of the block pairs spa's exported
plan computes (the default pattern's blocks are all full) and spa's scale,
and runs out = SDPA(q, k, v, mask), then out.backward(dout) under autograd.
Printed: the largest |spa - autograd| of dq, dk and dv, absolute and
relative to the largest autograd gradient, and the times of both backward
passes (autograd's: the backward call alone, after an untimed forward).
"""
import argparse
import json
import os
import statistics
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import cpu_name, json_of, sh  # noqa: E402


def dense_mask(layout, n, heads):
    """[H, n, n] bool from spa plan --export-layout: every block pair the
    plan computes, clipped to n (partial blocks only at the end)."""
    with h5py.File(layout, "r") as f:
        B = int(f.attrs["block"])
        if int(f.attrs.get("causal", 0)):
            sys.exit("peers_grad: the dense mask here is block-level; causal patterns are not covered")
        nb = -(-n // B)
        lay = np.zeros((heads, nb, nb), dtype=bool)
        for num, idx in (("full_kv_num_blocks", "full_kv_indices"), ("kv_num_blocks", "kv_indices")):
            cnt, ind = f[num][...], f[idx][...]
            for h in range(heads):
                for c in range(nb):
                    lay[h, c, ind[h, c, :cnt[h, c]]] = True
    m = np.repeat(np.repeat(lay, B, axis=1), B, axis=2)[:, :n, :n]
    return torch.from_numpy(np.ascontiguousarray(m))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spa", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--sizes", default="2048,4096,8192")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |diff| over the largest gradient")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print("spa grad against PyTorch %s autograd (dense masked SDPA) on %s, %d threads each, H=%d D=%d, "
          "default pattern" % (torch.__version__, cpu_name(), args.threads, args.heads, args.dim), flush=True)
    rows, failed = [], False
    for n in (int(x) for x in args.sizes.split(",")):
        w = args.workdir
        inp, fwd, grad, layout = (os.path.join(w, "%s_%d.h5" % (x, n)) for x in ("in", "fwd", "grad", "layout"))
        common = ["--n", str(n), "--heads", str(args.heads), "--dim", str(args.dim), "--seed", str(args.seed)]
        sh([args.spa, "gen", "--output", inp, "--grad"] + common)
        sh([args.spa, "plan", "--export-layout", layout] + common)
        # out and lse stored beside q, k, v, dout: spa grad then times the backward alone
        sh([args.spa, "run", "--input", inp, "--output", fwd, "--seed", str(args.seed)], env)
        with h5py.File(fwd, "r") as f, h5py.File(inp, "a") as g:
            for x in ("out", "lse"):
                g.create_dataset(x, data=f[x][...])
            for a, v in f.attrs.items():
                if a not in g.attrs:
                    g.attrs[a] = v
        times = []
        for _ in range(args.reps):
            if os.path.exists(grad):
                os.remove(grad)
            j = json_of(sh([args.spa, "grad", "--input", inp, "--output", grad, "--seed", str(args.seed),
                            "--threads", str(args.threads), "--json"], env))
            if j.get("forward") != "stored":
                sys.exit("peers_grad: spa grad recomputed out and lse: %s" % j.get("forward"))
            times.append(j["seconds_total"])
        t_spa = statistics.median(times)
        with h5py.File(inp, "r") as f:
            q, k, v, dout = (torch.from_numpy(f[x][...])[None].contiguous() for x in ("q", "k", "v", "dout"))
            scale = float(f.attrs["scale"])
        with h5py.File(grad, "r") as f:
            spa_g = {x: f[x][...] for x in ("dq", "dk", "dv")}
        mask = dense_mask(layout, n, args.heads)[None]
        tt = []
        for _ in range(args.reps):
            qq, kk, vv = (x.clone().requires_grad_(True) for x in (q, k, v))
            out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=scale)
            t0 = time.perf_counter()
            out.backward(dout)
            tt.append(time.perf_counter() - t0)
        t_torch = statistics.median(tt)
        line = {"n": n, "spa_s": t_spa, "autograd_s": t_torch, "x": t_torch / t_spa}
        for x, t in (("dq", qq), ("dk", kk), ("dv", vv)):
            ref = t.grad[0].numpy()
            d = float(np.abs(spa_g[x] - ref).max())
            line[x + "_maxdiff"] = d
            line[x + "_rel"] = d / float(np.abs(ref).max())
            failed |= not line[x + "_rel"] <= args.tolerance
        rows.append(line)
        print(json.dumps(line), flush=True)
        for path in (inp, fwd, grad, layout):
            os.remove(path)
    print()
    print("%6s %9s %11s %8s %10s %10s %10s %9s" % ("n", "spa s", "autograd s", "x spa", "|dq| diff", "|dk| diff",
                                                  "|dv| diff", "rel max"))
    for l in rows:
        print("%6d %9.4f %11.4f %8.1f %10.1e %10.1e %10.1e %9.1e" % (
            l["n"], l["spa_s"], l["autograd_s"], l["x"], l["dq_maxdiff"], l["dk_maxdiff"], l["dv_maxdiff"],
            max(l["dq_rel"], l["dk_rel"], l["dv_rel"])))
    print("times: backward pass alone, median of %d; load average at the end %.1f"
          % (args.reps, os.getloadavg()[0]))
    if failed:
        print("peers_grad: spa and autograd differ by more than %g of the largest gradient" % args.tolerance)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
