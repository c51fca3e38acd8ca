#!/usr/bin/env python3
"""smpi_check.py - spa on 16 simulated nodes against a real one-rank run.

    smpi_check.py --source SRC --spa REAL_SPA --work DIR

Builds spa with smpicc (scripts/smpi/build.sh), runs the same small case
  1. for real, one rank;
  2. under smpirun on 16 simulated 2-core nodes, computing for real;
  3. under smpirun in model mode (SPA_SMPI_MODEL=1: no kernel, FLOPs
     charged to the simulated hosts);
and checks that every JSON field of the contract is present, that run 2's
checksum equals run 1's (bit for bit outside the global rows, float32
rounding on them: relative 1e-6), that both simulated runs report the
FLOPs of the real run and the same bytes per transport, that the random
links went over MPI_Get, and that the model run simulated the time its
FLOPs take at the platform's speed. Exit 77 (skipped) without SimGrid.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

CASE = ["run", "--n", "16384", "--heads", "2", "--dim", "64", "--json"]
FIELDS = ["n", "heads", "dim", "ranks", "threads", "seconds_total", "seconds_compute",
          "seconds_halo", "seconds_global", "seconds_rma", "seconds_io", "bytes_halo",
          "bytes_global", "bytes_rma", "random_transport", "flops", "gflops", "checksum"]
NODES, SPEED = 16, 5e9
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run_json(cmd, env, what):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=400)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        print(f"{what} failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        sys.exit(1)
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--spa", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    if not shutil.which("smpicc") or not shutil.which("smpirun"):
        print("SimGrid (smpicc, smpirun) is not installed: skipped")
        return 77
    os.makedirs(a.work, exist_ok=True)
    scripts = os.path.join(a.source, "scripts", "smpi")
    b = subprocess.run(["bash", os.path.join(scripts, "build.sh"), os.path.join(a.work, "build")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if b.returncode == 77:
        print(b.stdout)
        return 77
    if b.returncode != 0:
        print("SMPI build failed:\n" + b.stdout[-4000:])
        return 1
    smpi_spa = b.stdout.strip().splitlines()[-1]
    plat = os.path.join(a.work, "cluster16")
    subprocess.run([sys.executable, os.path.join(scripts, "smpi_platform.py"), "--nodes", str(NODES),
                    "--cores", "2", "--speed", f"{SPEED:g}f", "--out", plat], check=True)

    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    real = run_json([a.spa] + CASE, env, "real run")
    smpirun = ["smpirun", "-np", str(NODES), "-platform", plat + ".xml", "-hostfile", plat + ".hosts",
               "--cfg=smpi/host-speed:1e9", "--cfg=smpi/coll-selector:ompi", "--cfg=smpi/test:1e-7",
               "--cfg=smpi/iprobe:1e-7", "--cfg=smpi/grow-injected-times:no",
               "--log=root.thresh:critical"]
    sim = run_json(smpirun + [smpi_spa] + CASE, env, "simulated run")
    env_model = dict(env, SPA_SMPI_MODEL="1")
    model = run_json(smpirun + ["--cfg=smpi/simulate-computation:no", smpi_spa] + CASE, env_model,
                     "simulated model run")

    for name, d in (("simulated", sim), ("model", model)):
        missing = [f for f in FIELDS if f not in d]
        check(not missing, f"{name}: JSON has every contract field (missing: {missing})")
        check(d.get("ranks") == NODES, f"{name}: ranks = {d.get('ranks')} (want {NODES})")
        check(d.get("flops") == real["flops"], f"{name}: flops {d.get('flops')} = real {real['flops']}")
        check(d.get("random_transport") == "rma", f"{name}: random links over {d.get('random_transport')}")
    c0, c1 = real["checksum"], sim["checksum"]
    rel = abs(c1 - c0) / max(abs(c0), 1e-30)
    check(rel < 1e-6, f"checksum simulated {c1!r} vs real one rank {c0!r} (relative {rel:.2e})")
    for f in ("bytes_halo_total", "bytes_global_total", "bytes_rma_total"):
        check(sim.get(f, -1) > 0 and sim.get(f) == model.get(f),
              f"{f}: computing {sim.get(f)} = model {model.get(f)} (> 0)")
    # simulated time is deterministic: the slowest rank's compute is at least
    # its share of the FLOPs at the platform speed (the kernel was replaced)
    floor = real["flops"] / NODES / SPEED
    check(floor <= model["seconds_compute"] <= 2 * floor,
          f"model compute {model['seconds_compute']:.4g} s within [1, 2] x FLOPs/(P speed) = {floor:.4g} s")
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
