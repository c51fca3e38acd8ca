#!/usr/bin/python3
"""MPICH against Open MPI, bit for bit.

Runs `spa run` with two spa programs (one built against Open MPI, one
against MPICH) at NP ranks through scripts/mpirun.sh, which picks each
program's own launcher, and compares the bytes of `out` and `lse`. Prints
the first differing values when they differ.

The run is `--input data/sample.h5` unless ARGS (one string, split on
spaces) gives spa's pattern and shape. Each `--mpich-env K=V` goes to the
MPICH runs only; with `--repeat R` the MPICH program runs R times, each
compared with the one reference run. The reference is the --openmpi
program at P ranks, or the --ref program at `--ref-np` ranks: spa's output
is the same bits at any rank count outside the global rows, so the MPICH
program at one rank (no one-sided transfers) is a reference that does not
depend on how the Open MPI build was compiled.

Usage: compare.py --openmpi SPA --mpich SPA --np P --data DIR --workdir DIR
                  [--args ARGS] [--mpich-env K=V]... [--repeat R]
                  [--ref SPA --ref-np N]
"""
import argparse
import os
import subprocess
import sys

import h5py
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--openmpi", "--ref", dest="ref", required=True)
ap.add_argument("--mpich", required=True)
ap.add_argument("--np", type=int, required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--workdir", required=True)
ap.add_argument("--args", default=None)
ap.add_argument("--mpich-env", action="append", default=[])
ap.add_argument("--repeat", type=int, default=1)
ap.add_argument("--ref-np", type=int, default=None)
ap.add_argument("--launcher", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "scripts", "mpirun.sh"))
opt = ap.parse_args()
os.makedirs(opt.workdir, exist_ok=True)
env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
mpich_env = dict(env, **dict(kv.split("=", 1) for kv in opt.mpich_env))
case = opt.args.split() if opt.args else ["--input", os.path.join(opt.data, "sample.h5")]


def run(name, exe, env, np_):
    path = os.path.join(opt.workdir, f"{name}_p{np_}.h5")
    if os.path.exists(path):
        os.remove(path)
    cmd = ["sh", opt.launcher, "-n", str(np_), exe, "run"] + case + ["--output", path]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(f"FAIL: {name}: {' '.join(cmd)} exited {r.returncode}\n{r.stdout}{r.stderr}")
        sys.exit(1)
    with h5py.File(path, "r") as f:
        got = {d: f[d][...] for d in ("out", "lse")}
        if f.attrs["ranks"] != np_:
            print(f"FAIL: {name}: the file says ranks = {f.attrs['ranks']}")
            sys.exit(1)
    return got


ref_np = opt.ref_np or opt.np
ref = run("reference", opt.ref, env, ref_np)
print(f"reference: {opt.ref} at {ref_np} rank(s)")
if opt.mpich_env:
    print("MPICH runs with " + " ".join(opt.mpich_env))
bad = 0
for rep in range(opt.repeat):
    got = run("mpich", opt.mpich, mpich_env, opt.np)
    for d in ("out", "lse"):
        a, b = ref[d], got[d]
        same = a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        if same:
            print(f"run {rep + 1}: {d}: {a.shape} {a.dtype}: bit-identical")
            continue
        bad += 1
        diff = np.flatnonzero(a.view(np.uint32).ravel() != b.view(np.uint32).ravel())
        print(f"FAIL: run {rep + 1}: {d}: {diff.size} of {a.size} values differ; maxdiff "
              f"{np.nanmax(np.abs(a.astype(np.float64) - b)):.3g}")
        for i in diff[:5]:
            print(f"  [{i}] reference {a.ravel()[i]!r} mpich {b.ravel()[i]!r}")
sys.exit(1 if bad else 0)
