#!/usr/bin/env python3
"""sweep.py - spa's scaling study on simulated clusters (SimGrid SMPI).

    sweep.py --smpi SPA_SMPI --real SPA_REAL --out DIR [--quick]
             [--steps calib,strong,weak,compare] [--nodes 16,32,...]
             [--strong-n N] [--tokens-per-node N] [--node-gflops G]
             [--heads H] [--compare-n N] [--compare-ranks 1,2,4,8]

SPA_SMPI is the smpicc build (scripts/smpi/build.sh), SPA_REAL the normal
build. Steps, each writing a CSV in DIR:
  calib.csv     the kernel's GFLOP/s here, 1 rank, 1 and 2 threads (real)
  strong.csv    fixed n on 16..1024 simulated 2-core nodes, one rank each
  weak.csv      fixed n per node (--tokens-per-node, 65536) on the same
                clusters
  compare.csv   P = 1..8 real runs (mpirun, 1 thread per rank, this
                machine) against the same runs simulated on a one-host,
                2-core platform like this machine, and on P cluster nodes
  bytes.csv     bytes each rank receives, spa against ring attention's
                (P - 1) / P * 2 * n * D * 4 * H
and plots (PNG) when matplotlib is importable. The simulated runs use the
model mode (SPA_SMPI_MODEL=1, see docs/smpi.md): kernel time is the useful
FLOPs divided by the calibrated speed; messages are simulated. Every
simulated row also records what the simulation cost here: wall_seconds,
and the simulator's peak resident memory (sim_peak_rss_mb, all mappings,
as ps counts it; sim_peak_anon_mb, its private part), sampled every 0.2 s.

--steps runs a subset (e.g. --steps weak): the speeds then come from
calib.csv in DIR, or from --node-gflops (one simulated 2-core node's
useful GFLOP/s; its cores get half each). bytes.csv needs the strong step.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = ["seconds_total", "seconds_compute", "seconds_halo", "seconds_global", "seconds_rma",
          "seconds_io", "seconds_wait", "bytes_halo", "bytes_global", "bytes_rma",
          "bytes_halo_total", "bytes_global_total", "bytes_rma_total", "random_transport", "flops",
          "gflops", "checksum", "version", "block", "local_blocks", "radius", "random", "seed",
          "causal", "globals"]
# The columns of jobs/spa.sbatch's results CSV, so that scripts/collect.py
# summarises and plots the simulated runs like the measured ones.
SPA_META = ["job_id", "sweep", "start_utc", "nodes", "tasks", "cpus_per_task", "launcher"]
SPA_FIELDS = ["n", "heads", "dim", "ranks", "threads", "seconds_total", "seconds_compute",
              "seconds_halo", "seconds_global", "seconds_rma", "seconds_io", "seconds_wait",
              "bytes_halo", "bytes_global", "bytes_rma", "bytes_halo_total", "bytes_global_total",
              "bytes_rma_total", "random_transport", "flops", "gflops", "peak_rss_bytes", "checksum",
              "version", "block", "local_blocks", "radius", "random", "seed", "causal", "globals"]
# Model mode; Open MPI's collective algorithms; MPI_Test and MPI_Iprobe cost
# 0.1 us each, as on a real machine, instead of SMPI's default 100 us (which
# grows on repeated calls to speed up polling loops).
SMPI_CFG = ["--cfg=smpi/simulate-computation:no", "--cfg=smpi/test:1e-7", "--cfg=smpi/iprobe:1e-7",
            "--cfg=smpi/grow-injected-times:no", "--cfg=smpi/shared-malloc-blocksize:67108864",
            "--log=root.thresh:critical"]


def env_base():
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
             OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    return e


def last_json(text, what):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"sweep.py: no JSON from {what}:\n{text[-2000:]}")


def proc_tree(pid):
    out = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [q for c in f.read().split() for q in proc_tree(int(c))]
    except OSError:
        pass
    return out


def tree_memory(pid):
    """kB of VmRSS and RssAnon summed over pid and its descendants."""
    rss = anon = 0
    for q in proc_tree(pid):
        try:
            with open(f"/proc/{q}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1])
        except OSError:
            pass
    return rss, anon


def run(cmd, env, what, cwd=None):
    """Runs cmd (in cwd); its last JSON line, with the wall time and peak memory."""
    t = time.time()
    with tempfile.TemporaryFile(mode="w+") as log:
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd)
        peak_rss = peak_anon = 0
        while p.poll() is None:
            rss, anon = tree_memory(p.pid)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            time.sleep(0.2)
        log.seek(0)
        text = log.read()
    if p.returncode != 0:
        sys.exit(f"sweep.py: {what} failed ({p.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
    d = last_json(text, what)
    d["wall_seconds"] = time.time() - t
    d["sim_peak_rss_mb"] = peak_rss // 1024
    d["sim_peak_anon_mb"] = peak_anon // 1024
    return d


def spa_args(n, heads):
    return ["run", "--n", str(n), "--heads", str(heads), "--dim", "64", "--json"]


def real_run(spa, ranks, threads, n, heads, reps=3):
    """Fastest of reps runs: the machine is shared, and noise only slows."""
    runs = [real_run1(spa, ranks, threads, n, heads) for _ in range(reps)]
    return min(runs, key=lambda d: d["seconds_total"])


def real_run1(spa, ranks, threads, n, heads):
    env = env_base()
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [spa] + spa_args(n, heads) + ["--threads", str(threads)]
    if ranks > 1:
        cmd = ["mpirun", "-n", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    return run(cmd, env, f"real run P={ranks}")


def sim_run(spa, out, tag, nodes, ranks_per_node, cores, speed, threads, n, heads, bw, lat):
    prefix = os.path.join(out, "platforms", tag)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    subprocess.run([sys.executable, os.path.join(HERE, "smpi_platform.py"), "--nodes", str(nodes),
                    "--cores", str(cores), "--speed", f"{speed:.6g}f", "--bw", bw, "--lat", lat,
                    "--ranks-per-node", str(ranks_per_node), "--out", prefix], check=True)
    env = env_base()
    env.update(SPA_SMPI_MODEL="1", SPA_SMPI_THREADS=str(threads), SPA_ALLOW_SINGLE="1")
    np_ = nodes * ranks_per_node
    cmd = ["smpirun", "-np", str(np_), "-platform", prefix + ".xml", "-hostfile",
           prefix + ".hosts"] + SMPI_CFG + [spa] + spa_args(n, heads)
    if np_ > 1:  # SimGrid 3.32's ompi reduce fails on one rank
        cmd.insert(-len(spa_args(n, heads)) - 1, "--cfg=smpi/coll-selector:ompi")
    # smpirun writes its hostfile (smpitmp-host*) to the current folder:
    # the platform's folder, not the caller's
    return run(cmd, env, f"simulated run {tag}", cwd=os.path.dirname(prefix))


def row(base, d):
    r = dict(base)
    for f in FIELDS:
        r[f] = d.get(f)
    r["wall_seconds"] = round(d["wall_seconds"], 3)
    r["sim_peak_rss_mb"] = d["sim_peak_rss_mb"]
    r["sim_peak_anon_mb"] = d["sim_peak_anon_mb"]
    return r


def read_csv(path):
    def value(v):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    with open(path) as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}", flush=True)


def write_spa_csv(path, rows):
    """Rows of strong.csv and weak.csv in the measured study's CSV format."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SPA_META + SPA_FIELDS + ["args"])
        for r in rows:
            sweep = "smpi-strong" if r["kind"] == "strong" else "weak-smpi"
            meta = ["smpi", sweep, "", r["nodes"], r["ranks"], 2, "smpirun"]
            cells = []
            for k in SPA_FIELDS:
                v = r.get(k)
                if k == "threads":
                    v = r.get("threads_modelled")
                if isinstance(v, bool):
                    v = "true" if v else "false"
                cells.append("" if v is None else v)
            w.writerow(meta + cells + [f"run --n {r['n']} --heads {r['heads']} --dim {r['dim']}"])
    print(f"wrote {path}", flush=True)


def ring_bytes(P, n, D, H):
    return (P - 1) / P * 2 * n * D * 4 * H


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smpi", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="16..128 nodes, smaller n")
    ap.add_argument("--steps", default="calib,strong,weak,compare",
                    help="which of calib, strong, weak, compare to run (bytes.csv comes with strong)")
    ap.add_argument("--nodes", default="16,32,64,128,256,512,1024")
    ap.add_argument("--strong-n", type=int, default=1 << 20)
    ap.add_argument("--tokens-per-node", "--weak-n-per-node", dest="weak_n_per_node", type=int,
                    default=65536, help="weak scaling's tokens per node")
    ap.add_argument("--node-gflops", type=float, default=0.0,
                    help="a simulated node's useful GFLOP/s (2 threads), instead of calib.csv")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--compare-n", type=int, default=1 << 17)
    ap.add_argument("--compare-ranks", default="1,2,4,8")
    ap.add_argument("--calib-n", type=int, default=1 << 16)
    ap.add_argument("--reuse", action="store_true",
                    help="keep calib.csv and strong.csv already in --out")
    ap.add_argument("--bw", default="100Gbps")
    ap.add_argument("--lat", default="1us")
    a = ap.parse_args()
    if a.quick:
        a.nodes, a.strong_n, a.weak_n_per_node, a.compare_ranks = "16,32,64,128", 1 << 18, 4096, "1,2,4"
        a.compare_n, a.calib_n = 1 << 15, 1 << 15
    steps = set(a.steps.split(","))
    unknown = steps - {"calib", "strong", "weak", "compare"}
    if unknown:
        sys.exit(f"sweep.py: unknown --steps {','.join(sorted(unknown))}")
    if a.reuse:  # the old meaning: keep calib.csv and strong.csv
        steps -= {"calib", "strong"}
        steps |= {"weak", "compare"}
    a.out, a.smpi, a.real = (os.path.abspath(x) for x in (a.out, a.smpi, a.real))
    os.makedirs(a.out, exist_ok=True)
    nodes = [int(x) for x in a.nodes.split(",")]
    H, D = a.heads, 64

    # 1. calibration: useful FLOP/s of the kernel, one rank, 1 and 2 threads
    calib = []
    calib_csv = os.path.join(a.out, "calib.csv")
    if "calib" not in steps and a.node_gflops > 0:
        calib = [dict(threads=1, gflops_compute=a.node_gflops / 2),
                 dict(threads=2, gflops_compute=a.node_gflops)]
    elif "calib" not in steps:
        if not os.path.exists(calib_csv):
            sys.exit(f"sweep.py: no {calib_csv}; run the calib step or give --node-gflops")
        calib = read_csv(calib_csv)
    for t in (1, 2) if not calib else ():
        d = real_run(a.real, 1, t, a.calib_n, H)
        calib.append(dict(threads=t, n=a.calib_n, heads=H, seconds_compute=d["seconds_compute"],
                          flops=d["flops"], gflops_compute=d["flops"] / d["seconds_compute"] / 1e9))
    if "calib" in steps:
        write_csv(calib_csv, calib)
    core1 = calib[0]["gflops_compute"] * 1e9     # one thread alone
    node2 = calib[1]["gflops_compute"] * 1e9     # the 2-core node, 2 threads
    # a simulated node: 2 cores of node2 / 2 each; a rank charges FLOPs / 2
    core_cluster = node2 / 2

    def cluster(tag, P, n):
        return sim_run(a.smpi, a.out, tag, P, 1, 2, core_cluster, 2, n, H, a.bw, a.lat)

    # 2. strong and 3. weak scaling; a step not run keeps its CSV, if any
    strong = weak = []
    for kind in ("strong", "weak"):
        if kind not in steps:
            path = os.path.join(a.out, f"{kind}.csv")
            rows = read_csv(path) if os.path.exists(path) else []
            if kind == "strong":
                strong = rows
            else:
                weak = rows
            continue
        rows = []
        for P in nodes:
            n = a.strong_n if kind == "strong" else a.weak_n_per_node * P
            d = cluster(f"{kind}-{P}", P, n)
            rows.append(row(dict(kind=kind, nodes=P, ranks=P, threads_modelled=2, n=n, heads=H,
                                 dim=D), d))
            print(f"{kind} P={P} n={n}: {d['seconds_total']:.4g} s simulated, "
                  f"{d['wall_seconds']:.1f} s and {d['sim_peak_rss_mb']} MB "
                  f"({d['sim_peak_anon_mb']} MB private) to simulate", flush=True)
        t0, p0 = rows[0]["seconds_total"], rows[0]["nodes"]
        for r in rows:
            if kind == "strong":
                r["efficiency"] = t0 * p0 / (r["seconds_total"] * r["nodes"])
            else:
                r["efficiency"] = t0 / r["seconds_total"]
        write_csv(os.path.join(a.out, f"{kind}.csv"), rows)
        if kind == "strong":
            strong = rows
        else:
            weak = rows

    # 4. model error at small P against real runs on this machine
    cmp_rows = []
    for P in [int(x) for x in a.compare_ranks.split(",")] if "compare" in steps else []:
        real = real_run(a.real, P, 1, a.compare_n, H)
        here = sim_run(a.smpi, a.out, f"here-{P}", 1, P, 2, core1, 1, a.compare_n, H, a.bw, a.lat)
        clus = sim_run(a.smpi, a.out, f"nodes-{P}", P, 1, 2, core1, 1, a.compare_n, H, a.bw, a.lat)
        r = dict(ranks=P, n=a.compare_n, heads=H, real_total=real["seconds_total"],
                 real_compute=real["seconds_compute"], sim_here_total=here["seconds_total"],
                 sim_here_compute=here["seconds_compute"], sim_nodes_total=clus["seconds_total"],
                 sim_nodes_compute=clus["seconds_compute"])
        r["error_here"] = (r["sim_here_total"] - r["real_total"]) / r["real_total"]
        r["error_nodes"] = (r["sim_nodes_total"] - r["real_total"]) / r["real_total"]
        r["bytes_real"] = real["bytes_halo"] + real["bytes_global"] + real["bytes_rma"]
        r["bytes_sim"] = here["bytes_halo"] + here["bytes_global"] + here["bytes_rma"]
        cmp_rows.append(r)
        print(f"compare P={P}: real {r['real_total']:.4g} s, simulated here {r['sim_here_total']:.4g} s "
              f"({100 * r['error_here']:+.1f}%), on {P} nodes {r['sim_nodes_total']:.4g} s", flush=True)
    if cmp_rows:
        write_csv(os.path.join(a.out, "compare.csv"), cmp_rows)

    # 5. bytes per rank against ring attention
    brows = []
    for r in strong:
        P, n = r["nodes"], r["n"]
        tot = r["bytes_halo_total"] + r["bytes_global_total"] + r["bytes_rma_total"]
        mx = r["bytes_halo"] + r["bytes_global"] + r["bytes_rma"]
        brows.append(dict(ranks=P, n=n, heads=H, dim=D, spa_bytes_mean=tot / P, spa_bytes_max=mx,
                          halo_mean=r["bytes_halo_total"] / P, global_mean=r["bytes_global_total"] / P,
                          rma_mean=r["bytes_rma_total"] / P, ring_bytes=ring_bytes(P, n, D, H),
                          ratio_ring_over_spa=ring_bytes(P, n, D, H) / (tot / P)))
    if "strong" in steps:
        write_csv(os.path.join(a.out, "bytes.csv"), brows)

    if strong or weak:
        write_spa_csv(os.path.join(a.out, "spa_smpi.csv"), strong + weak)
    subprocess.run([sys.executable, os.path.join(HERE, "plot.py"), a.out], check=False)
    collect = os.path.join(HERE, "..", "collect.py")
    if os.path.exists(collect):  # the measured study's summary and plots
        subprocess.run([sys.executable, collect, os.path.join(a.out, "spa_smpi.csv"), "--out",
                        os.path.join(a.out, "summary")], check=False)


if __name__ == "__main__":
    main()
