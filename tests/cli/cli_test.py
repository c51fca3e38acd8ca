#!/usr/bin/env python3
"""Drives the spa program for the CLI tests.

    cli_test.py [launch options] exit CODE [--touch F] [--expect-file F] [--gen F] -- ARGS...
    cli_test.py [launch options] CHECK [-- extra spa flags]

`exit` runs `spa ARGS` and requires exit code CODE, an empty stdout and
exactly one line on stderr that mentions an error, starting "spa: error:".
--gen F first writes a small valid input F (spa gen, 2 heads) for ARGS.
The other checks run spa and verify what it prints or writes. Every spa
launch has a timeout, so a hang fails the test instead of stalling it.
With --np 1, spa runs without a launcher (as one rank); otherwise under
the MPI launcher.
"""
import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys
import zlib

SPEC_FIELDS = {
    "n": int, "heads": int, "dim": int, "ranks": int, "threads": int,
    "seconds_total": float, "seconds_compute": float, "seconds_halo": float,
    "seconds_global": float, "seconds_rma": float, "seconds_io": float,
    "bytes_halo": int, "bytes_global": int, "bytes_rma": int,
    "random_transport": str, "flops": int, "gflops": float, "checksum": float,
}
EXTRA_FIELDS = {
    "seconds_wait": float, "peak_rss_bytes": int, "bytes_halo_total": int,
    "bytes_global_total": int, "bytes_rma_total": int, "block": int, "random": int,
    "seed": int, "causal": bool, "globals": int,
}

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from checks import check, finish  # noqa: E402


def launch(opt, args, np=None, timeout=60):
    np = opt.np if np is None else np
    cmd = [opt.spa] + list(args)
    if np != 1:
        cmd = [opt.mpiexec, opt.npflag, str(np)] + opt.preflags.split() + cmd
    print("$", " ".join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print("FAIL: no exit within %d s (hang)" % timeout)
        sys.exit(1)
    sys.stdout.write(p.stdout)
    sys.stdout.write("".join("stderr: " + l + "\n" for l in p.stderr.splitlines()))
    print("exit code", p.returncode)
    return p


def run_json(opt, args, np=None):
    p = launch(opt, list(args) + ["--json"], np)
    if not check(p.returncode == 0, "exit code 0 for %s" % " ".join(args)):
        finish()
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    check(len(lines) == 1, "exactly one line on stdout (got %d)" % len(lines))
    try:
        return json.loads(lines[0])
    except (ValueError, IndexError) as e:
        check(False, "stdout is one JSON object: %s" % e)
        finish()


def check_fields(obj, fields):
    for k, t in fields.items():
        if not check(k in obj, "field %s present" % k):
            continue
        v = obj[k]
        if t is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        elif t is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, t)
        check(ok, "field %s has type %s (got %r)" % (k, t.__name__, v))


# --------------------------------------------------------------- checks

def cmd_exit(opt, rest):
    ap = argparse.ArgumentParser(prog="exit", allow_abbrev=False)
    ap.add_argument("code", type=int)
    ap.add_argument("--touch", action="append", default=[])
    ap.add_argument("--expect-file", action="append", default=[])
    ap.add_argument("--gen", action="append", default=[])
    a = ap.parse_args(opt.pre)
    for f in a.gen:
        p = launch(opt, ["gen", "--n", "256", "--heads", "2", "--dim", "8", "--output", f], np=1)
        if not check(p.returncode == 0, "spa gen writes the input %s" % f):
            finish()
    args = rest
    kept = {}
    for f in a.touch:
        with open(f, "wb") as fh:
            fh.write(b"precious contents\n")
    for f in a.expect_file:
        with open(f, "rb") as fh:
            kept[f] = fh.read()
    p = launch(opt, args)
    check(p.returncode == a.code, "exit code %d (got %d)" % (a.code, p.returncode))
    check(p.stdout.strip() == "", "nothing on stdout")
    errs = [l for l in p.stderr.splitlines() if "error" in l.lower()]
    check(len(errs) == 1, "exactly one error line on stderr (got %d)" % len(errs))
    if errs:
        check(errs[0].startswith("spa: error: "), "the error line starts with 'spa: error: '")
    for f, data in kept.items():
        with open(f, "rb") as fh:
            check(fh.read() == data, "%s is left untouched" % f)
    finish()


def cmd_version(opt, rest):
    want = opt.pre[0]
    p = launch(opt, ["--version"])
    check(p.returncode == 0, "exit code 0")
    check(re.fullmatch(r"spa %s\nkernel (avx512|avx2|generic|blas)\n" % re.escape(want), p.stdout) is not None,
          "prints 'spa %s' and the kernel" % want)
    finish()


def cmd_help(opt, rest):
    flags = {
        "run": ["--input", "--output", "--n", "--heads", "--dim", "--json", "--threads",
                "--temperature", "--progress"],
        "gen": ["--output", "--n", "--heads", "--dim", "--seed", "--temperature", "--grad", "dout"],
        "bench": ["--n", "--heads", "--dim", "--json", "--threads", "--warmup", "--reps",
                  "--backward", "10 * D * sum |S(i)|", "bytes_rma_bwd"],
        "grad": ["--input", "--output", "--json", "--threads", "dout", "out", "lse", "dq", "dk",
                 "dv", "plan", "exp(s q_i.k_j - lse_i)", "Dl_i", "dS_ij = P_ij (dout_i.v_j - Dl_i)",
                 "dq_i  = s sum_j dS_ij k_j", "dk_j = s sum_i dS_ij q_i", "bytes_halo_bwd",
                 "bytes_global_bwd", "exit 3"],
        "plan": ["--n", "--heads", "--ranks", "--stats", "--image", "--json", "--export-layout",
                 "full_kv_num_blocks", "full_kv_indices"],
    }
    pattern = ["--block", "--local-blocks", "--radius", "--globals", "--random", "--seed",
               "--causal", "--scale", "--stride", "--summary", "--dilated", "--layout",
               "@a:b", "-inf", "kv_num_blocks", "kv_indices", "[H or 1, nb, nb]",
               "(i - j) mod S == 0", "j mod L >= L - C", "(p - s*w) mod r == h mod r"]
    p = launch(opt, ["--help"])
    check(p.returncode == 0, "spa --help exits 0")
    for c in flags:
        check(c in p.stdout, "spa --help names '%s'" % c)
    for c, fl in flags.items():
        p = launch(opt, [c, "--help"])
        check(p.returncode == 0, "spa %s --help exits 0" % c)
        for f in fl + (pattern if c != "gen" else []):
            check(f in p.stdout, "spa %s --help documents %s" % (c, f))
    finish()


def cmd_json(opt, rest):
    """run --json at opt.np ranks: the SPEC fields, and agreement with
    `spa plan` (FLOPs, bytes per rank) and with a one-rank run (checksum)."""
    pat = ["--n", "4099", "--heads", "2", "--dim", "16", "--random", "2", "--block", "32",
           "--seed", "5"] + rest
    r = run_json(opt, ["run"] + pat)
    check_fields(r, SPEC_FIELDS)
    check_fields(r, EXTRA_FIELDS)
    check(r.get("n") == 4099 and r.get("heads") == 2 and r.get("dim") == 16, "n, heads, dim")
    check(r.get("ranks") == opt.np, "ranks == %d" % opt.np)
    check(r.get("random_transport") in ("rma", "p2p"), "random_transport is rma or p2p")
    check(r.get("block") == 32 and r.get("random") == 2 and r.get("seed") == 5, "pattern echoed")
    for k in ("halo", "global", "rma"):
        check(r["bytes_%s_total" % k] >= r["bytes_" + k], "bytes_%s_total >= bytes_%s" % (k, k))
    check(r["seconds_total"] >= r["seconds_compute"] >= 0, "seconds_total >= seconds_compute")
    check(r["gflops"] > 0 and r["peak_rss_bytes"] > 0, "gflops and peak_rss_bytes > 0")
    plan = run_json(opt, ["plan", "--ranks", str(opt.np)] + [a for a in pat], np=1)
    check(plan["flops"] == r["flops"], "run flops %d == plan flops %d" % (r["flops"], plan["flops"]))
    for k in ("halo", "global", "rma"):
        check(plan["bytes_%s_total" % k] == r["bytes_%s_total" % k],
              "bytes_%s_total: run %d == plan %d" % (k, r["bytes_%s_total" % k], plan["bytes_%s_total" % k]))
        check(plan["bytes_" + k] == r["bytes_" + k],
              "bytes_%s (largest rank): run %d == plan %d" % (k, r["bytes_" + k], plan["bytes_" + k]))
    if opt.np != 1:
        one = run_json(opt, ["run"] + pat, np=1)
        d = abs(one["checksum"] - r["checksum"])
        check(d <= 1e-5 * max(1.0, abs(one["checksum"])),
              "checksum at %d ranks %.9g == one rank %.9g" % (opt.np, r["checksum"], one["checksum"]))
    finish()


def cmd_threads(opt, rest):
    r = run_json(opt, ["run", "--n", "2048", "--heads", "1", "--dim", "8", "--threads", "2"])
    check(r.get("threads") == 2, "threads == 2 (got %r)" % r.get("threads"))
    finish()


def cmd_bench(opt, rest):
    r = run_json(opt, ["bench", "--n", "2048", "--heads", "2", "--dim", "16", "--warmup", "1",
                       "--reps", "3"])
    check_fields(r, SPEC_FIELDS)
    check(r.get("reps") == 3 and r.get("warmup") == 1, "reps and warmup echoed")
    check(r.get("statistic") == "median", "statistic is median")
    check(r["seconds_total_min"] <= r["seconds_total"] <= r["seconds_total_max"],
          "min <= median <= max")
    finish()


def cmd_bench_backward(opt, rest):
    """bench --backward: the run fields plus bytes_*_bwd, and 10 D sum|S(i)|
    flops, i.e. 10/4 of the forward bench's."""
    args = ["bench", "--n", "2048", "--heads", "2", "--dim", "16", "--warmup", "1", "--reps", "2"]
    r = run_json(opt, args + ["--backward"])
    f = run_json(opt, args)
    check_fields(r, dict(SPEC_FIELDS, bytes_halo_bwd=int, bytes_rma_bwd=int, bytes_global_bwd=int))
    check("bytes_halo_bwd" not in f, "the forward bench has no bytes_*_bwd")
    check(r.get("pass") == "backward" and f.get("pass") == "forward", "pass echoed")
    check(r["flops"] * 4 == f["flops"] * 10, "flops %d = 10/4 of the forward's %d" % (r["flops"], f["flops"]))
    if opt.np > 1:
        check(r["bytes_halo_bwd"] > 0 and r["bytes_global_bwd"] > 0, "gradients go back to their owners")
    else:
        check(r["bytes_halo_bwd"] == r["bytes_rma_bwd"] == r["bytes_global_bwd"] == 0,
              "one rank sends nothing back")
    check(r["seconds_total_min"] <= r["seconds_total"] <= r["seconds_total_max"],
          "min <= median <= max")
    finish()


def cmd_progress(opt, rest):
    args = ["run", "--n", "4096", "--heads", "2", "--dim", "16"]
    p = launch(opt, args + ["--progress"])
    check(p.returncode == 0, "exit code 0")
    check("100.0%" in p.stderr, "progress reaches 100.0%")
    check(p.stderr.endswith("\n"), "the progress line ends with a newline")
    check(p.stderr.count("100.0%") == 1, "one progress line (rank 0 only)")
    q = launch(opt, args)
    check("%" not in q.stderr, "no progress when stderr is not a terminal")
    finish()


def png_read(path):
    """(width, height, color type, rows of RGB tuples) of an 8-bit PNG."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("no PNG signature")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        ln, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + ln]
        crc = struct.unpack(">I", data[pos + 8 + ln:pos + 12 + ln])[0]
        if zlib.crc32(typ + body) & 0xffffffff != crc:
            raise ValueError("bad CRC in chunk %r" % typ)
        if typ == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif typ == b"IDAT":
            idat += body
        pos += 12 + ln
    w, h, depth, ctype = ihdr[:4]
    if depth != 8 or ctype != 2:
        return w, h, ctype, None
    raw, bpp, stride = zlib.decompress(idat), 3, 3 * w
    rows, prev, p = [], bytearray(stride), 0
    for _ in range(h):
        ft, line = raw[p], bytearray(raw[p + 1:p + 1 + stride])
        p += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if ft == 1:
                line[x] = (line[x] + a) & 255
            elif ft == 2:
                line[x] = (line[x] + b) & 255
            elif ft == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ft == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pr) & 255
        rows.append([tuple(line[3 * i:3 * i + 3]) for i in range(w)])
        prev = line
    return w, h, ctype, rows


def cmd_image(opt, rest):
    work = opt.workdir
    os.makedirs(work, exist_ok=True)
    # n = 8192, block 64: 128 blocks, one pixel each; only the band |c - b| <= 1
    img = os.path.join(work, "band.png")
    p = launch(opt, ["plan", "--n", "8192", "--globals", "none", "--random", "0", "--image", img])
    check(p.returncode == 0, "exit code 0")
    w, h, ctype, rows = png_read(img)
    check((w, h) == (128, 128), "IHDR 128 x 128 (got %d x %d)" % (w, h))
    check(rows is not None, "8-bit RGB (color type %d)" % ctype)
    if rows:
        bad = [(y, x) for y in range(h) for x in range(w)
               if (rows[y][x] != (255, 255, 255)) != (abs(x - y) <= 1)]
        check(not bad, "pixels set exactly on the band |c - b| <= 1 (first wrong: %r)" % bad[:3])
    # 3000 blocks: downsampled by 3 to 1000 x 1000; globals light the first row and column
    img = os.path.join(work, "big.png")
    p = launch(opt, ["plan", "--n", str(64 * 3000), "--image", img])
    check(p.returncode == 0, "exit code 0")
    w, h, ctype, rows = png_read(img)
    check((w, h) == (1000, 1000), "IHDR 1000 x 1000 (got %d x %d)" % (w, h))
    if rows:
        check(all(rows[0][x] != (255, 255, 255) for x in range(w)), "global row 0 is full")
        check(all(rows[y][0] != (255, 255, 255) for y in range(h)), "global column 0 is full")
        check(rows[500][500] != (255, 255, 255), "diagonal is set")
    finish()


def cmd_stats(opt, rest):
    # 16 blocks, window 3, nothing else: a path, so hops are |c - b|
    r = run_json(opt, ["plan", "--n", "1024", "--globals", "none", "--random", "0", "--stats"])
    hp = r.get("hops", {})
    check(hp.get("max") == 15, "path of 16 blocks: max hops 15 (got %r)" % hp.get("max"))
    check(abs(hp.get("mean", 0) - 17.0 / 3.0) < 1e-6, "mean hops (nb+1)/3 = 5.667 (got %r)" % hp.get("mean"))
    check(hp.get("reachable") == hp.get("pairs") == 16 * 15, "all 240 ordered pairs reachable")
    # causal: only keys behind, so half the pairs
    r = run_json(opt, ["plan", "--n", "1024", "--globals", "none", "--random", "0", "--stats", "--causal"])
    hp = r.get("hops", {})
    check(hp.get("reachable") == 120 and hp.get("max") == 15, "causal path: 120 reachable, max 15")
    # BigBird globals: everything within two hops through a global token
    r = run_json(opt, ["plan", "--n", "65536", "--stats"])
    hp = r.get("hops", {})
    check(hp.get("max") == 2, "default pattern: max hops 2 (got %r)" % hp.get("max"))
    check(hp.get("sources") == 1024 and hp.get("sampled") is False, "all 1024 blocks as roots")
    r = run_json(opt, ["plan", "--n", "262144", "--stats", "--globals", "none"])
    hp = r.get("hops", {})
    check(hp.get("sources") == 256 and hp.get("sampled") is True, "4096 blocks: 256 sampled roots")
    check(1 <= hp.get("mean", 0) <= hp.get("max", 0), "1 <= mean <= max")
    # the text form prints the numbers
    p = launch(opt, ["plan", "--n", "1024", "--globals", "none", "--random", "0", "--stats"])
    check("max 15, mean 5.6667" in p.stdout, "text report prints 'max 15, mean 5.6667'")
    finish()


def cmd_ranks(opt, rest):
    P = 4
    args = ["plan", "--n", "20000", "--block", "64", "--ranks", str(P)] + rest
    r = run_json(opt, args)
    per = r.get("per_rank", [])
    check(len(per) == P, "%d per-rank entries" % P)
    nb = r["blocks"]
    check([e["block_begin"] for e in per] == [0] + [e["block_end"] for e in per[:-1]]
          and per[-1]["block_end"] == nb, "shards tile [0, nb) in order")
    sizes = [e["block_end"] - e["block_begin"] for e in per]
    check(max(sizes) - min(sizes) <= 1, "shard sizes differ by at most one block")
    for k in ("halo", "global", "rma"):
        vals = [e["bytes_" + k] for e in per]
        check(sum(vals) == r["bytes_%s_total" % k], "bytes_%s_total is the sum over ranks" % k)
        check(max(vals) == r["bytes_" + k], "bytes_%s is the largest rank's" % k)
    check(sum(e["bytes_halo"] for e in per) > 0, "halo bytes are counted")
    # the text table: the total row is the sum of the rank rows
    p = launch(opt, args)
    rows = {}
    for line in p.stdout.splitlines():
        f = line.split()
        if len(f) == 5 and (f[0].isdigit() or f[0] == "total"):
            rows[f[0]] = [int(x) for x in f[1:]]
    check(len(rows) == P + 1, "table has %d rank rows and a total" % P)
    if len(rows) == P + 1:
        for col in range(4):
            check(sum(rows[str(i)][col] for i in range(P)) == rows["total"][col],
                  "text total of column %d is the sum of the ranks" % col)
    finish()


def cmd_io(opt, rest):
    """gen, then run on the file: the same numbers as the synthetic run; the
    output file holds out and lse whose sum matches the checksum."""
    work = opt.workdir
    os.makedirs(work, exist_ok=True)
    inp, out = os.path.join(work, "in.h5"), os.path.join(work, "out.h5")
    for f in (inp, out):
        if os.path.exists(f):
            os.remove(f)
    shape = ["--n", "3001", "--heads", "2", "--dim", "16"]
    p = launch(opt, ["gen", "--output", inp, "--seed", "3", "--temperature", "2"] + shape)
    check(p.returncode == 0 and os.path.exists(inp), "gen writes %s" % inp)
    syn = run_json(opt, ["run", "--seed", "3", "--temperature", "2", "--random", "1"] + shape)
    fil = run_json(opt, ["run", "--input", inp, "--output", out, "--seed", "3", "--random", "1"])
    check((fil["n"], fil["heads"], fil["dim"]) == (3001, 2, 16), "shape read from the file")
    check(fil["checksum"] == syn["checksum"],
          "checksum from the file %r == synthetic %r" % (fil["checksum"], syn["checksum"]))
    check(fil["seconds_io"] > 0, "seconds_io > 0 with --input/--output")
    try:
        import h5py
        import numpy as np
    except ImportError:
        check(False, "python3-h5py and numpy are installed")
        finish()
    with h5py.File(out, "r") as h:
        check(h["out"].shape == (2, 3001, 16), "out shape (2, 3001, 16)")
        check(h["lse"].shape == (2, 3001), "lse shape (2, 3001)")
        s = float(np.asarray(h["out"], dtype=np.float64).sum())
        check(abs(s - fil["checksum"]) <= 1e-4 * max(1.0, abs(s)), "sum(out) %r == checksum %r" % (s, fil["checksum"]))
    finish()


CHECKS = {"exit": cmd_exit, "version": cmd_version, "help": cmd_help, "json": cmd_json,
          "threads": cmd_threads, "bench": cmd_bench, "bench_backward": cmd_bench_backward, "progress": cmd_progress,
          "image": cmd_image, "stats": cmd_stats, "ranks": cmd_ranks, "io": cmd_io}


def main():
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spa", required=True)
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--npflag", default="-n")
    ap.add_argument("--preflags", default="")
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--workdir", default=".")
    ap.add_argument("check", choices=sorted(CHECKS))
    argv = sys.argv[1:]
    # spa's own arguments follow "--" and are never parsed here
    cut = argv.index("--") if "--" in argv else len(argv)
    opt, opt.pre = ap.parse_known_args(argv[:cut])
    # "{work}" in any argument is this test's own folder, so tests that run
    # at the same time never share a file
    os.makedirs(opt.workdir, exist_ok=True)
    opt.pre = [a.replace("{work}", opt.workdir) for a in opt.pre]
    CHECKS[opt.check](opt, [a.replace("{work}", opt.workdir) for a in argv[cut + 1:]])


if __name__ == "__main__":
    main()
