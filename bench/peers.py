"""spa beside its peers on the same inputs: PyTorch FlexAttention with a
BlockMask built from spa's exported plan, and dense scaled_dot_product_attention
with the equivalent boolean mask. Run by bench/peers.sh inside its virtual
environment (torch, h5py, numpy); not part of CI.

For each n: `spa gen` writes q, k, v; `spa plan --export-layout` writes the
block layout in FlexAttention's form; `spa run --input --output` computes
spa's `out`; `spa bench` times spa (median of its repetitions). The peers read
the very same q, k, v from the HDF5 file, are timed after a warm-up (which
holds FlexAttention's compilation), and their outputs are compared with spa's.

Each peer is a class with `prepare` (untimed set-up: masks, compilation),
`forward` (the timed call, returning `out` as numpy [H, n, D]); the spa side
is `Spa`. The measurement loop, the comparison and the table only see those
methods and `Result` rows, so another direction of the computation (the
backward of issue 11: spa's dq, dk, dv against autograd's) adds its own
timed method and columns without touching the rest.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def json_of(text):
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def sh(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit("peers: %s failed (exit %d):\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p.stdout


def timed(fn, warmup, reps):
    """Median wall time of reps calls after warmup calls, and the last result."""
    for _ in range(warmup):
        res = fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


class Case:
    """One size: spa's input file, its exported layout and the tensors read back."""

    def __init__(self, args, n):
        self.args, self.n = args, n
        w = args.workdir
        self.input = os.path.join(w, "in_%d.h5" % n)
        self.output = os.path.join(w, "out_%d.h5" % n)
        self.layout = os.path.join(w, "layout_%d.h5" % n)
        self.flags = list(args.flags)
        sh([args.spa, "gen", "--output", self.input, "--n", str(n), "--heads", str(args.heads),
            "--dim", str(args.dim), "--seed", str(args.seed)])
        sh([args.spa, "plan", "--n", str(n), "--heads", str(args.heads), "--dim", str(args.dim),
            "--seed", str(args.seed), "--export-layout", self.layout] + self.flags)
        with h5py.File(self.input, "r") as f:
            # [H, n, D] -> [1, H, n, D]: the peers get exactly spa's q, k, v
            self.q, self.k, self.v = (torch.from_numpy(f[x][...])[None].contiguous() for x in ("q", "k", "v"))
        with h5py.File(self.layout, "r") as f:
            self.block = int(f.attrs["block"])
            self.causal = bool(f.attrs.get("causal", 0))
            self.lay = {x: torch.from_numpy(f[x][...]) for x in
                        ("full_kv_num_blocks", "full_kv_indices", "kv_num_blocks", "kv_indices")}
        H, nb = self.lay["full_kv_num_blocks"].shape
        assert H == args.heads and nb == -(-n // self.block), (H, nb)
        self.nb = nb

    def token_rule(self, q_idx, kv_idx):
        """The token-level rule inside partial blocks, for patterns whose
        partial blocks come only from the causal diagonal and a partial last
        block (the default pattern: globals fill the first and last block,
        windows and random links are whole blocks)."""
        ok = kv_idx < self.n
        if self.causal:
            ok = ok & (q_idx >= kv_idx)
        return ok

    def dense_block_layout(self):
        """[H, nb, nb] bool: the block pairs spa's plan computes (full or partial)."""
        H, nb = self.args.heads, self.nb
        lay = torch.zeros(H, nb, nb, dtype=torch.bool)
        for num, idx in (("full_kv_num_blocks", "full_kv_indices"), ("kv_num_blocks", "kv_indices")):
            cnt, ind = self.lay[num], self.lay[idx].long()
            valid = torch.arange(ind.shape[-1])[None, None, :] < cnt[..., None]
            hh, cc, jj = torch.nonzero(valid, as_tuple=True)
            lay[hh, cc, ind[hh, cc, jj]] = True
        return lay


class Spa:
    name = "spa"

    def __init__(self, case):
        self.case = case

    def prepare(self):
        c, a = self.case, self.case.args
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
        self.run_json = json_of(sh([a.spa, "run", "--input", c.input, "--output", c.output, "--json",
                                    "--threads", str(a.threads), "--seed", str(a.seed)] + c.flags, env))
        self.bench_json = json_of(sh([a.spa, "bench", "--n", str(c.n), "--heads", str(a.heads),
                                      "--dim", str(a.dim), "--seed", str(a.seed), "--threads", str(a.threads),
                                      "--warmup", "1", "--reps", str(a.spa_reps), "--json"] + c.flags, env))
        if abs(self.run_json["checksum"] - self.bench_json["checksum"]) > 1e-6 * max(1.0, abs(self.run_json["checksum"])):
            sys.exit("peers: spa bench computed on other inputs than spa gen wrote (checksums %r, %r)"
                     % (self.run_json["checksum"], self.bench_json["checksum"]))

    def forward_result(self):
        with h5py.File(self.case.output, "r") as f:
            out = f["out"][...]
        return self.bench_json["seconds_total"], out, "median of %d (spa bench), %.3f s from the file (spa run)" % (
            self.case.args.spa_reps, self.run_json["seconds_total"])


class Flex:
    name = "FlexAttention"

    def __init__(self, case):
        self.case = case

    def prepare(self):
        c = self.case
        L = c.lay

        def mask_mod(b, h, q_idx, kv_idx):
            return c.token_rule(q_idx, kv_idx)

        def padded(ind):
            # spa's export is as wide as its longest row (K); the CPU kernel
            # asserts K * BLOCK_SIZE >= n, as create_block_mask makes it
            # (K = nb). The entries past a row's count are padding either way.
            return torch.nn.functional.pad(ind, (0, c.nb - ind.shape[-1]))[None].contiguous()

        # spa's export as it is, with the batch dimension added (README: t[None])
        self.block_mask = BlockMask.from_kv_blocks(
            L["kv_num_blocks"][None].contiguous(), padded(L["kv_indices"]),
            L["full_kv_num_blocks"][None].contiguous(), padded(L["full_kv_indices"]),
            BLOCK_SIZE=c.block, mask_mod=mask_mod, seq_lengths=(c.n, c.n))
        self.fn = torch.compile(flex_attention, dynamic=False)

    def forward(self):
        with torch.no_grad():
            return self.fn(self.case.q, self.case.k, self.case.v, block_mask=self.block_mask)


class DenseSDPA:
    """scaled_dot_product_attention with the dense boolean mask of the same
    pattern, one call per chunk of query rows: the [H, rows, n] mask is built
    before each call, outside the timed part, so its memory stays bounded.
    Every row costs dense SDPA the same (all n keys, masked or not), so above
    --dense-sample-above only a few chunks spread over the sequence run, and
    the time is their time scaled by n / rows run (the table says so)."""
    name = "dense SDPA"

    def __init__(self, case):
        self.case = case

    def prepare(self):
        c, a = self.case, self.case.args
        self.blocks = c.dense_block_layout()
        # rows per call: the bool mask and the float mask SDPA may make of it
        rows = max(c.block, (a.dense_mask_mib << 20) // (5 * a.heads * c.n) // c.block * c.block)
        self.rows = min(rows, c.n)
        starts = list(range(0, c.n, self.rows))
        if c.n > a.dense_sample_above and len(starts) > a.dense_sample_chunks:
            k = a.dense_sample_chunks
            starts = [starts[round(i * (len(starts) - 1) / (k - 1))] for i in range(k)] if k > 1 else starts[:1]
        self.starts = starts
        self.rows_run = sum(min(r0 + self.rows, c.n) - r0 for r0 in starts)

    def mask_rows(self, r0, r1):
        c, B = self.case, self.case.block
        m = self.blocks[:, r0 // B:-(-r1 // B)]
        m = m.repeat_interleave(B, dim=1)[:, r0 - (r0 // B) * B:][:, :r1 - r0]
        m = m.repeat_interleave(B, dim=2)[:, :, :c.n]
        qi = torch.arange(r0, r1)[:, None]
        ki = torch.arange(c.n)[None, :]
        # the token rule runs only where the block is partial; elsewhere it is true
        return (m & c.token_rule(qi, ki)[None])[None]

    def forward(self):
        c = self.case
        out = torch.full_like(c.q, float("nan"))
        t = 0.0
        with torch.no_grad():
            for r0 in self.starts:
                r1 = min(r0 + self.rows, c.n)
                mask = self.mask_rows(r0, r1)
                t0 = time.perf_counter()
                out[:, :, r0:r1] = F.scaled_dot_product_attention(c.q[:, :, r0:r1], c.k, c.v, attn_mask=mask)
                t += time.perf_counter() - t0
        return t * c.n / self.rows_run, out


class Result:
    def __init__(self, peer, seconds, out, note):
        self.peer, self.seconds, self.out, self.note = peer, seconds, out, note


def measure_forward(case, args):
    spa = Spa(case)
    spa.prepare()
    s, out, note = spa.forward_result()
    rows = {"spa": Result("spa", s, out, note)}
    if "flex" in args.peers:
        flex = Flex(case)
        t0 = time.perf_counter()
        flex.prepare()
        res = flex.forward()  # compiles
        compile_s = time.perf_counter() - t0
        s, res = timed(flex.forward, args.warmup, args.reps)
        rows["flex"] = Result("FlexAttention", s, res[0].numpy(),
                              "median of %d after %d warm-up; first call with compilation %.1f s"
                              % (args.reps, args.warmup + 1, compile_s))
    if "sdpa" in args.peers and case.n <= args.dense_max_n:
        d = DenseSDPA(case)
        d.prepare()
        times, res = [], None
        for _ in range(args.dense_reps):
            t, res = d.forward()
            times.append(t)
        how = ("sum of the SDPA calls over all %d chunks of %d query rows" % (len(d.starts), d.rows)
               if d.rows_run == case.n else
               "EXTRAPOLATED: %d of %d chunks of %d query rows run (rows %s), their time x %.2f; "
               "the difference is over those rows"
               % (len(d.starts), -(-case.n // d.rows), d.rows,
                  ",".join("%d:%d" % (r0, min(r0 + d.rows, case.n)) for r0 in d.starts), case.n / d.rows_run))
        rows["sdpa"] = Result("dense SDPA", statistics.median(times), res[0].numpy(),
                              how + ", median of %d" % args.dense_reps)
        rows["sdpa"].extrapolated = d.rows_run != case.n
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spa", required=True, help="the spa binary")
    p.add_argument("--workdir", required=True)
    p.add_argument("--sizes", default="16384,32768,65536,131072")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="timed FlexAttention calls (median)")
    p.add_argument("--warmup", type=int, default=1, help="FlexAttention calls after the compiling one")
    p.add_argument("--spa-reps", type=int, default=5)
    p.add_argument("--dense-reps", type=int, default=1)
    p.add_argument("--dense-sample-above", type=int, default=32768,
                   help="above this n, dense SDPA runs only --dense-sample-chunks chunks and extrapolates")
    p.add_argument("--dense-sample-chunks", type=int, default=3)
    p.add_argument("--dense-max-n", type=int, default=1 << 30, help="skip dense SDPA above this n")
    p.add_argument("--dense-mask-mib", type=int, default=2048,
                   help="bound on one chunk's mask (bool + float) in MiB")
    p.add_argument("--peers", default="flex,sdpa")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("flags", nargs="*", help="spa pattern flags after --, e.g. -- --causal")
    args = p.parse_args()
    args.peers = set(args.peers.split(","))

    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    if "flex" in args.peers and "avx2" not in flags:
        print("peers: this CPU has no AVX2; FlexAttention on the CPU needs it, skipping it")
        args.peers.discard("flex")

    print("spa against PyTorch %s on %s (%d CPUs, load average %.1f), %d threads each, H=%d D=%d, "
          "spa pattern: %s"
          % (torch.__version__, cpu_name(), os.cpu_count(), os.getloadavg()[0], args.threads, args.heads, args.dim,
             " ".join(args.flags) or "default (--block 64 --local-blocks 3 --random 3, globals first and last block)"),
          flush=True)
    table, notes, failed = [], [], False
    for n in (int(x) for x in args.sizes.split(",")):
        case = Case(args, n)
        rows = measure_forward(case, args)
        spa = rows["spa"]
        line = {"n": n, "spa": spa.seconds}
        for key in ("flex", "sdpa"):
            r = rows.get(key)
            if r is None:
                continue
            line[key] = r.seconds
            line[key + "_x"] = r.seconds / spa.seconds
            d = np.abs(r.out - spa.out)
            line[key + "_diff"] = float(np.nanmax(d))  # rows a sampled SDPA did not run are NaN
            if getattr(r, "extrapolated", False):
                line[key + "_extrapolated"] = True
            notes.append("n=%d %s: %s" % (n, r.peer, r.note))
        notes.append("n=%d spa: %s" % (n, spa.note))
        if "flex_diff" in line and not line["flex_diff"] <= args.tolerance:
            failed = True
        table.append(line)
        print(json.dumps(line), flush=True)
        for path in (case.input, case.output, case.layout):
            os.remove(path)

    def f(v, fmt):
        return fmt % v if v is not None else "-"
    print()
    print("%8s %9s %11s %7s %11s %7s %14s %14s" % ("n", "spa s", "Flex s", "x Flex", "SDPA s", "x SDPA",
                                               "|spa-Flex|max", "|spa-SDPA|max"))
    for l in table:
        print("%8d %9.3f %11s %7s %11s %7s %14s %14s" % (
            l["n"], l["spa"], f(l.get("flex"), "%.3f"), f(l.get("flex_x"), "%.1f"),
            f(l.get("sdpa"), "%.2f") + ("*" if l.get("sdpa_extrapolated") else ""), f(l.get("sdpa_x"), "%.0f"),
            f(l.get("flex_diff"), "%.1e"), f(l.get("sdpa_diff"), "%.1e")))
    print("load average at the end: %.1f (other work on the machine slows every column)" % os.getloadavg()[0])
    if any(l.get("sdpa_extrapolated") for l in table):
        print("* extrapolated from the chunks of query rows that ran (below)")
    print()
    for s in notes:
        print("  " + s)
    if failed:
        print("peers: spa and FlexAttention differ by more than %g" % args.tolerance)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
