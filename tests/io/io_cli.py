#!/usr/bin/env python3
"""Drives the spa program for the HDF5 input/output tests.

    io_cli.py [launch options] errors     every input-file and output-path error
    io_cli.py [launch options] regress    data/sample.h5 against data/expected.h5
    io_cli.py [launch options] oracle     spa's output against dense numpy
    io_cli.py [launch options] sample     make_sample reproduces data/
    io_cli.py [launch options] gen        spa gen: same bytes at P ranks as at 1

Launch options: --spa EXE --mpiexec EXE --np P --workdir DIR [--data DIR]
[--make-sample EXE]. With --np 1 spa runs without a launcher (as one
rank), otherwise under the MPI launcher with -q so that spa's own message
is the only text on stderr. Every launch has a timeout, so a hang fails.
Needs numpy and h5py (Debian: python3-numpy python3-h5py).
"""
import argparse
import glob
import os
import subprocess
import sys

try:
    import h5py
    import numpy as np
except ImportError as e:
    print("FAIL: this test needs numpy and h5py (python3-numpy, python3-h5py): %s" % e)
    sys.exit(1)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from checks import check, finish  # noqa: E402


def launch(opt, args, timeout=60):
    cmd = [opt.spa] + [str(a) for a in args]
    if opt.np != 1:
        cmd = [opt.mpiexec, "-q", "-n", str(opt.np), "--oversubscribe", "--bind-to", "none"] + cmd
    print("$", " ".join(cmd))
    env = dict(os.environ)
    for k, v in (("OMPI_ALLOW_RUN_AS_ROOT", "1"), ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
                 ("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1")):
        env.setdefault(k, v)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        check(False, "no exit within %d s (hang)" % timeout)
        finish()
    sys.stdout.write("".join("  stdout: " + l + "\n" for l in p.stdout.splitlines()))
    sys.stdout.write("".join("  stderr: " + l + "\n" for l in p.stderr.splitlines()))
    print("  exit code", p.returncode)
    return p


def temp_files(folder):
    return glob.glob(os.path.join(folder, ".*.tmp.*"))


def read_bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def compare(name, got, want, rel):
    """maxdiff <= rel * max|want|; on failure the first values side by side."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if not check(got.shape == want.shape, "%s shape %s == %s" % (name, got.shape, want.shape)):
        return
    diff = np.abs(got - want)
    maxdiff = float(np.nanmax(diff)) if diff.size else 0.0
    if np.isnan(diff).any():
        maxdiff = float("nan")
    tol = rel * max(float(np.abs(want).max()), 1e-30)
    print("  %s: maxdiff %.3g (tolerance %.3g)" % (name, maxdiff, tol))
    if not check(maxdiff <= tol, "%s within %.3g of the expected values" % (name, tol)):
        g, w = got.ravel(), want.ravel()
        worst = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff).ravel()))
        print("  index        got            want")
        for i in list(range(min(5, g.size))) + [worst]:
            print("  %-10d %-14.8g %-14.8g" % (i, g[i], w[i]))


# ------------------------------------------------------------------ errors

def write_input(path, shape=(2, 300, 8), dtypes=("f4", "f4", "f4"), seed=0, edit=None):
    """q, k, v of `shape`; edit(name, array) may change values before writing."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for name, dt in zip("qkv", dtypes):
            a = rng.uniform(-1, 1, size=shape).astype(dt)
            if edit:
                a = edit(name, a)
            f.create_dataset(name, data=a)


def cmd_errors(opt):
    w = opt.workdir
    out = os.path.join(w, "kept.h5")
    good = os.path.join(w, "good.h5")
    write_input(good)

    def nan_k(name, a):
        # n = 300, block 64: at 4 ranks token 200 is on rank 2 and 270 on rank 3
        if name == "k":
            a[1, 270, 3] = np.nan
            a[1, 200, 5] = np.nan
        return a

    def inf_v(name, a):
        if name == "v":
            a[0, 299, 7] = np.inf
        return a

    def big_q(name, a):
        if name == "q":
            a[0, 10, 0] = 1e300  # finite in float64, not in float32
        return a

    def nan_v16(name, a):
        if name == "v":
            a[1, 0, 0] = np.nan
        return a

    bad = {}  # name -> (maker, words the message must contain)
    bad["missing_file"] = (None, ["missing_file.h5"])
    bad["not_hdf5"] = (lambda p: open(p, "w").write("plain text\n"), ["not an HDF5 file"])
    bad["input_is_folder"] = (lambda p: os.makedirs(p, exist_ok=True), ["folder"])

    def h5(builder):
        def make(p):
            with h5py.File(p, "w") as f:
                builder(f)
        return make

    f4 = np.zeros((2, 64, 8), "f4")
    bad["missing_k"] = (h5(lambda f: [f.create_dataset(n, data=f4) for n in "qv"]), ["'k'"])
    bad["k_is_group"] = (h5(lambda f: [f.create_dataset(n, data=f4) for n in "qv"] +
                            [f.create_group("k")]), ["'k'"])
    bad["shapes_differ"] = (h5(lambda f: [f.create_dataset(n, data=f4) for n in "qk"] +
                               [f.create_dataset("v", data=np.zeros((2, 64, 4), "f4"))]),
                            ["'v'", "shape"])
    bad["rank1"] = (h5(lambda f: [f.create_dataset(n, data=np.zeros(64, "f4")) for n in "qkv"]),
                    ["'q'", "rank 1"])
    bad["rank5"] = (h5(lambda f: [f.create_dataset(n, data=np.zeros((1, 1, 2, 64, 8), "f4"))
                                  for n in "qkv"]), ["'q'", "rank 5"])
    bad["n_zero"] = (h5(lambda f: [f.create_dataset(n, shape=(2, 0, 8), dtype="f4")
                                   for n in "qkv"]), ["'q'", "[2, 0, 8]"])
    bad["d_zero"] = (h5(lambda f: [f.create_dataset(n, shape=(2, 64, 0), dtype="f4")
                                   for n in "qkv"]), ["'q'", "[2, 64, 0]"])
    bad["integer"] = (h5(lambda f: [f.create_dataset(n, data=f4) for n in "qv"] +
                         [f.create_dataset("k", data=np.zeros((2, 64, 8), "i4"))]), ["'k'"])
    huge = (2 ** 40, 2 ** 40, 8)
    bad["bytes_overflow"] = (h5(lambda f: [f.create_dataset(n, shape=huge, dtype="f4",
                                                            chunks=(1, 1, 8)) for n in "qkv"]),
                             ["'q'", "[1099511627776, 1099511627776, 8]"])
    manyheads = (2 ** 16, 2 ** 16, 1, 1)
    bad["heads_overflow"] = (h5(lambda f: [f.create_dataset(n, shape=manyheads, dtype="f4",
                                                            chunks=(1, 1, 1, 1)) for n in "qkv"]),
                             ["'q'", "[65536, 65536, 1, 1]"])
    bad["nan_k"] = (lambda p: write_input(p, edit=nan_k), ["'k'", "[1, 200, 5]"])
    bad["inf_v"] = (lambda p: write_input(p, edit=inf_v), ["'v'", "[0, 299, 7]"])
    bad["f64_beyond_f32"] = (lambda p: write_input(p, dtypes=("f8", "f4", "f4"), edit=big_q),
                             ["'q'", "[0, 10, 0]"])
    bad["nan_f16"] = (lambda p: write_input(p, dtypes=("f4", "f4", "f2"), edit=nan_v16),
                      ["'v'", "[1, 0, 0]"])

    def expect_error(args, code, words, keep):
        """spa args -> exit code, one 'spa: error:' line with words; keep untouched."""
        before = {k: read_bytes(k) for k in keep}
        p = launch(opt, args)
        check(p.returncode == code, "exit code %d (got %d)" % (code, p.returncode))
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        check(len(lines) == 1, "exactly one line on stderr (got %d)" % len(lines))
        if lines:
            check(lines[0].startswith("spa: error: "), "the line starts with 'spa: error: '")
            for word in words:
                check(word in lines[0], "the message names %s" % word)
        for k, data in before.items():
            check(read_bytes(k) == data, "%s is left byte for byte as it was" % k)
        check(not temp_files(w), "no temporary file left in %s" % w)

    for name, (maker, words) in bad.items():
        print("-- input error:", name)
        path = os.path.join(w, name + ".h5")
        if maker:
            maker(path)
        with open(out, "wb") as fh:
            fh.write(b"the previous output\n")
        expect_error(["run", "--input", path, "--output", out], 3, words, [out])

    print("-- output folder missing")
    expect_error(["run", "--input", good, "--output", os.path.join(w, "no_such", "o.h5")], 2,
                 ["no_such"], [good])
    print("-- output folder is a file")
    plain = os.path.join(w, "plain_file")
    with open(plain, "w") as fh:
        fh.write("x\n")
    expect_error(["run", "--input", good, "--output", os.path.join(plain, "o.h5")], 2,
                 ["plain_file"], [good, plain])
    print("-- output folder not writable (even for root)")
    expect_error(["run", "--input", good, "--output", "/proc/spa_io_test.h5"], 2, ["/proc"],
                 [good])
    check(not os.path.exists("/proc/spa_io_test.h5"), "nothing created in /proc")
    print("-- output is the input")
    expect_error(["run", "--input", good, "--output", os.path.join(w, ".", "good.h5")], 2,
                 ["input"], [good])
    print("-- gen onto a missing folder")
    expect_error(["gen", "--n", "100", "--output", os.path.join(w, "no_such", "g.h5")], 2,
                 ["no_such"], [])

    print("-- a succeeding run replaces the old file")
    with open(out, "wb") as fh:
        fh.write(b"the previous output\n")
    p = launch(opt, ["run", "--input", good, "--output", out])
    check(p.returncode == 0, "exit code 0 (got %d)" % p.returncode)
    check(h5py.is_hdf5(out), "%s is now an HDF5 file" % out)
    if h5py.is_hdf5(out):
        with h5py.File(out, "r") as f:
            check(f["out"].shape == (2, 300, 8), "out has the shape of q")
    check(not temp_files(w), "no temporary file left in %s" % w)
    print("-- gen replaces atomically too")
    g = os.path.join(w, "gen.h5")
    with open(g, "wb") as fh:
        fh.write(b"old\n")
    p = launch(opt, ["gen", "--n", "100", "--heads", "2", "--dim", "4", "--output", g])
    check(p.returncode == 0 and h5py.is_hdf5(g), "gen replaced the old file")
    check(not temp_files(w), "no temporary file left in %s" % w)
    finish()


# ----------------------------------------------------------------- regress

def cmd_regress(opt):
    sample = os.path.join(opt.data, "sample.h5")
    expected = os.path.join(opt.data, "expected.h5")
    out = os.path.join(opt.workdir, "sample_out.h5")
    if os.path.exists(out):
        os.remove(out)
    p = launch(opt, ["run", "--input", sample, "--output", out])
    if not check(p.returncode == 0, "exit code 0 (got %d)" % p.returncode):
        finish()
    with h5py.File(out, "r") as f, h5py.File(expected, "r") as e:
        for name in ("out", "lse"):
            compare(name, f[name][()], e[name][()], 1e-5)
        check(int(f.attrs["ranks"]) == opt.np, "attribute ranks = %d" % opt.np)
    finish()


def cmd_sample(opt):
    """make_sample writes data/ again: same inputs, same expected output."""
    p = subprocess.run([opt.make_sample, opt.workdir], capture_output=True, text=True, timeout=120)
    print(p.stdout + p.stderr)
    if not check(p.returncode == 0, "make_sample exit code 0"):
        finish()
    for fname, names in (("sample.h5", "qkv"), ("expected.h5", ("out", "lse"))):
        with h5py.File(os.path.join(opt.workdir, fname), "r") as a, \
                h5py.File(os.path.join(opt.data, fname), "r") as b:
            for n in names:
                check(a[n].dtype == b[n].dtype, "%s/%s dtype %s" % (fname, n, b[n].dtype))
                # the inputs are exact; the reference may round differently per build
                compare("%s/%s" % (fname, n), a[n][()], b[n][()], 0.0 if fname == "sample.h5"
                        else 1e-6)
    finish()


# --------------------------------------------------------------------- gen

def cmd_gen(opt):
    """spa gen writes the same bytes at --np ranks as at one."""
    args = ["gen", "--n", "1000", "--heads", "3", "--dim", "8", "--seed", "5"]
    files = []
    for np_ in (1, opt.np):
        path = os.path.join(opt.workdir, "gen_p%d.h5" % np_)
        if os.path.exists(path):
            os.remove(path)
        saved, opt.np = opt.np, np_
        p = launch(opt, args + ["--output", path])
        opt.np = saved
        check(p.returncode == 0, "exit code 0 at %d ranks" % np_)
        files.append(path)
    if all(os.path.exists(f) for f in files):
        check(read_bytes(files[0]) == read_bytes(files[1]), "the same bytes at 1 and %d ranks"
              % opt.np)
        with h5py.File(files[1], "r") as f:
            for n in "qkv":
                check(f[n].shape == (3, 1000, 8) and f[n].dtype == np.float32,
                      "%s is float32 [3, 1000, 8]" % n)
            check(np.isfinite(f["q"][()]).all() and np.abs(f["v"][()]).max() <= 1,
                  "values finite, v in [-1, 1]")
    check(not temp_files(opt.workdir), "no temporary file left")
    finish()


# ------------------------------------------------------------------ oracle

def dense(q, k, v, mask, scale):
    """q, k, v: [H, n, D] float64; mask: [H, n, n] bool -> out [H, n, D], lse [H, n]."""
    s = scale * np.einsum("hid,hjd->hij", q, k)
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=2, keepdims=True)
    p = np.exp(s - m)
    z = p.sum(axis=2, keepdims=True)
    return np.einsum("hij,hjd->hid", p / z, v), (m + np.log(z))[..., 0]


def spec_mask(n, H, B, mode, size, G, causal, rb):
    """SPEC section 1, token by token: local, global, random, causal."""
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    if mode == "blocks":
        local = np.abs(i // B - j // B) <= (size - 1) // 2
    else:
        local = np.abs(i - j) <= size
    isg = np.zeros(n, bool)
    isg[G] = True
    base = local | isg[None, :] | isg[:, None]
    masks = []
    for h in range(H):
        rnd = np.zeros((n, n), bool)
        for c in range(rb.shape[1]):
            for b in rb[h, c]:
                if b >= 0:
                    rnd[c * B:(c + 1) * B, b * B:(b + 1) * B] = True
        m = base | rnd
        if causal:
            m &= j <= i
        masks.append(m)
    return np.array(masks)


def check_random_blocks(rb, n, B, mode, size, G, causal, R):
    """Drawn blocks are distinct, eligible, and as many as R or all eligible."""
    nb = (n + B - 1) // B
    gblocks = set(int(g) // B for g in G)
    bad = 0
    for h in range(rb.shape[0]):
        for c in range(nb):
            if mode == "blocks":
                w = (size - 1) // 2
                lo, hi = max(c - w, 0), min(c + w, nb - 1)
            else:
                lo = max(c * B - size, 0) // B
                hi = min(c * B + B - 1 + size, n - 1) // B
            elig = [b for b in range(nb) if not lo <= b <= hi and b not in gblocks
                    and (not causal or b < lo)]
            drawn = [int(b) for b in rb[h, c] if b >= 0]
            ok = (len(set(drawn)) == len(drawn) and all(b in elig for b in drawn)
                  and len(drawn) == min(R, len(elig))
                  and all(b == -1 for b in rb[h, c][len(drawn):]))
            if not ok:
                bad += 1
                if bad <= 3:
                    print("  head %d block %d: drew %s, eligible %s" % (h, c, drawn, elig))
    check(bad == 0, "random blocks distinct, eligible and min(R, eligible) many")


def cmd_oracle(opt):
    n, H, D = 300, 2, 16
    rng = np.random.default_rng(5)
    # q float32, k float64, v float16: every conversion path in one file
    q = (rng.uniform(-1, 1, (H, n, D)) * 2).astype("f4")
    k = (rng.uniform(-1, 1, (H, n, D)) * 2).astype("f8")
    v = rng.uniform(-1, 1, (H, n, D)).astype("f2")
    cases = [
        ("blocks", ["--block", "32", "--local-blocks", "3", "--globals", "0,150:153",
                    "--random", "2"], (H, n, D)),
        ("radius_causal", ["--block", "32", "--radius", "20", "--globals", "7,299",
                           "--random", "2", "--causal"], (1, H, n, D)),
        ("w1_causal_default_globals", ["--block", "16", "--local-blocks", "1", "--random", "3",
                                       "--causal", "--seed", "9"], (H, n, D)),
        ("radius_scale_no_globals", ["--block", "32", "--radius", "45", "--globals", "none",
                                     "--random", "4", "--scale", "0.3", "--seed", "4"], (H, n, D)),
    ]
    for name, flags, shape in cases:
        print("-- case", name)
        inp = os.path.join(opt.workdir, "oracle_in_%s.h5" % name)
        out = os.path.join(opt.workdir, "oracle_out_%s.h5" % name)
        with h5py.File(inp, "w") as f:
            f["q"], f["k"], f["v"] = q.reshape(shape), k.reshape(shape), v.reshape(shape)
        p = launch(opt, ["run", "--input", inp, "--output", out] + flags)
        if not check(p.returncode == 0, "exit code 0 (got %d)" % p.returncode):
            continue
        with h5py.File(out, "r") as f:
            a = f.attrs
            B, R = int(a["block"]), int(a["random"])
            mode = a["local_mode"].decode() if isinstance(a["local_mode"], bytes) \
                else str(a["local_mode"])
            size, causal, scale = int(a["local_size"]), bool(a["causal"]), float(a["scale"])
            rb = f["plan/random_blocks"][()]
            G = f["plan/globals"][()]
            got_out = f["out"][()].reshape(H, n, D)
            got_lse = f["lse"][()].reshape(H, n)
            check(f["out"].shape == shape and f["lse"].shape == shape[:-1],
                  "out has q's shape, lse q's without the last dim")
            check(f["out"].dtype == np.float32 and f["lse"].dtype == np.float32, "float32")
            check(rb.dtype == np.int32 and G.dtype == np.int64, "plan dtypes int32, int64")
            check((int(a["n"]), int(a["heads"]), int(a["dim"]), int(a["ranks"])) ==
                  (n, H, D, opt.np), "attributes n, heads, dim, ranks")
            check(int(a["threads"]) >= 1 and "version" in a and "seed" in a,
                  "attributes threads, version, seed")
        # the attributes must say what the flags said
        fl = dict(zip(flags[::2], flags[1::2]))
        check(B == int(fl["--block"]) and R == int(fl["--random"]), "block and random recorded")
        check(causal == ("--causal" in flags), "causal recorded")
        check(mode == ("radius" if "--radius" in fl else "blocks"), "local mode recorded")
        check(size == int(fl.get("--radius", fl.get("--local-blocks", "3"))), "local size recorded")
        want_scale = float(fl.get("--scale", 1 / np.sqrt(D)))
        check(abs(scale - want_scale) < 1e-6, "scale %g recorded (want %g)" % (scale, want_scale))
        nb = (n + B - 1) // B
        check(rb.shape == (H, nb, R), "random_blocks shape [H, nb, R]")
        gspec = fl.get("--globals")
        if gspec is None:  # default: the first and the last block
            want_g = list(range(0, B)) + list(range((nb - 1) * B, n))
        elif gspec == "none":
            want_g = []
        else:
            want_g = []
            for part in gspec.split(","):
                lo, _, hi = part.partition(":")
                want_g += list(range(int(lo), int(hi))) if hi else [int(lo)]
        check(list(G) == sorted(set(want_g)), "plan/globals is the --globals set")
        check_random_blocks(rb, n, B, mode, size, G, causal, R)
        mask = spec_mask(n, H, B, mode, size, G, causal, rb)
        ref_out, ref_lse = dense(q.astype("f8"), k.astype("f4").astype("f8"),
                                 v.astype("f8"), mask, scale)
        compare("out", got_out, ref_out, 1e-5)
        compare("lse", got_lse, ref_lse, 1e-5)
    finish()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spa", required=True)
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--data")
    ap.add_argument("--make-sample")
    ap.add_argument("check", choices=["errors", "regress", "oracle", "sample", "gen"])
    opt = ap.parse_args()
    os.makedirs(opt.workdir, exist_ok=True)
    for stale in temp_files(opt.workdir):
        os.remove(stale)
    {"errors": cmd_errors, "regress": cmd_regress, "oracle": cmd_oracle,
     "sample": cmd_sample, "gen": cmd_gen}[opt.check](opt)


if __name__ == "__main__":
    main()
