#!/usr/bin/python3
"""MPICH against Open MPI on the regression sample, bit for bit.

Runs `spa run --input data/sample.h5` with two spa programs (one built
against Open MPI, one against MPICH) at NP ranks through scripts/mpirun.sh,
which picks each program's own launcher, and compares the bytes of `out`
and `lse`. Prints the first differing values when they differ.

Usage: compare.py --openmpi SPA --mpich SPA --np P --data DIR --workdir DIR
"""
import argparse
import os
import subprocess
import sys

import h5py
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--openmpi", required=True)
ap.add_argument("--mpich", required=True)
ap.add_argument("--np", type=int, required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--workdir", required=True)
ap.add_argument("--launcher", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "scripts", "mpirun.sh"))
opt = ap.parse_args()
os.makedirs(opt.workdir, exist_ok=True)
env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")

outs = {}
for name, exe in (("openmpi", opt.openmpi), ("mpich", opt.mpich)):
    path = os.path.join(opt.workdir, f"{name}_p{opt.np}.h5")
    if os.path.exists(path):
        os.remove(path)
    cmd = ["sh", opt.launcher, "-n", str(opt.np), exe, "run", "--input",
           os.path.join(opt.data, "sample.h5"), "--output", path]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(f"FAIL: {name}: {' '.join(cmd)} exited {r.returncode}\n{r.stdout}{r.stderr}")
        sys.exit(1)
    with h5py.File(path, "r") as f:
        outs[name] = {d: f[d][...] for d in ("out", "lse")}
        if f.attrs["ranks"] != opt.np:
            print(f"FAIL: {name}: the file says ranks = {f.attrs['ranks']}")
            sys.exit(1)

bad = 0
for d in ("out", "lse"):
    a, b = outs["openmpi"][d], outs["mpich"][d]
    same = a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if same:
        print(f"{d}: {a.shape} {a.dtype}: bit-identical")
        continue
    bad += 1
    diff = np.flatnonzero(a.view(np.uint32).ravel() != b.view(np.uint32).ravel())
    print(f"FAIL: {d}: {diff.size} of {a.size} values differ; maxdiff "
          f"{np.nanmax(np.abs(a.astype(np.float64) - b)):.3g}")
    for i in diff[:5]:
        print(f"  [{i}] openmpi {a.ravel()[i]!r} mpich {b.ravel()[i]!r}")
sys.exit(1 if bad else 0)
