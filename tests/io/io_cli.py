#!/usr/bin/env python3
"""Drives the spa program for the HDF5 input/output tests.

    io_cli.py [launch options] errors     every input-file and output-path error
    io_cli.py [launch options] regress    data/sample.h5 against data/expected.h5
    io_cli.py [launch options] oracle     spa's output against dense numpy
    io_cli.py [launch options] sample     make_sample reproduces data/
    io_cli.py [launch options] gen        spa gen: same bytes at P ranks as at 1
    io_cli.py [launch options] layout_errors  every malformed --layout file: exit 3
    io_cli.py [launch options] layout     --layout dense = sparse = numpy; the output
                                          records the pattern; export -> import
    io_cli.py [launch options] grad       spa gen --grad + spa grad against dense numpy
                                          gradients; stored out/lse = recomputed
    io_cli.py [launch options] grad_errors  spa grad's input errors: exit 3, one
                                          message, the existing output untouched

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


# ------------------------------------------------------------------ grad

def dense_grad(q, k, v, dout, mask, scale):
    """The backward pass of dense(), float64, [H, n, D]:
    P_ij = exp(s q_i.k_j - lse_i) on the mask; Dl_i = dout_i.out_i;
    dv_j = sum_i P_ij dout_i; dS_ij = P_ij (dout_i.v_j - Dl_i);
    dq_i = s sum_j dS_ij k_j; dk_j = s sum_i dS_ij q_i."""
    out, lse = dense(q, k, v, mask, scale)
    s = np.where(mask, scale * np.einsum("hid,hjd->hij", q, k), -np.inf)
    with np.errstate(invalid="ignore"):
        p = np.where(mask, np.exp(s - lse[..., None]), 0.0)
    dl = (dout * out).sum(axis=2)
    dv = np.einsum("hij,hid->hjd", p, dout)
    ds = p * (np.einsum("hid,hjd->hij", dout, v) - dl[..., None])
    dq = scale * np.einsum("hij,hjd->hid", ds, k)
    dk = scale * np.einsum("hij,hid->hjd", ds, q)
    return dq, dk, dv


GRAD_FLAGS = ["--block", "32", "--local-blocks", "3", "--globals", "0,150:153", "--random", "2"]


def with_forward(dst, src_in, src_run, drop=()):
    """dst: q, k, v, dout of src_in plus out, lse and the root attributes of
    the spa run output src_run (minus the attributes in drop)."""
    with h5py.File(dst, "w") as f, h5py.File(src_in, "r") as a, h5py.File(src_run, "r") as r:
        for name in ("q", "k", "v", "dout"):
            f[name] = a[name][()]
        f["out"], f["lse"] = r["out"][()], r["lse"][()]
        for key, val in r.attrs.items():
            if key not in drop:
                f.attrs[key] = val


def cmd_grad(opt):
    w = opt.workdir
    n, H, D = 300, 2, 16
    inp, out = os.path.join(w, "grad_in.h5"), os.path.join(w, "grad_out.h5")
    p = launch(opt, ["gen", "--grad", "--output", inp, "--n", n, "--heads", H, "--dim", D,
                     "--seed", 3])
    check(p.returncode == 0, "spa gen --grad: exit code 0 (got %d)" % p.returncode)
    with h5py.File(inp, "r") as f:
        check(sorted(f) == ["dout", "k", "q", "v"], "gen --grad writes q, k, v, dout")
        q, k, v, dout = (f[x][()].astype("f8") for x in ("q", "k", "v", "dout"))
    check(dout.shape == (H, n, D) and np.abs(dout).max() <= 1 and
          not np.array_equal(dout, v), "dout [H, n, D], in [-1, 1), its own values")

    print("-- spa grad against numpy")
    p = launch(opt, ["grad", "--input", inp, "--output", out, "--json"] + GRAD_FLAGS)
    if not check(p.returncode == 0, "exit code 0 (got %d)" % p.returncode):
        finish()
    import json
    rep = json.loads(p.stdout)
    for key in ("bytes_halo_bwd", "bytes_rma_bwd", "bytes_global_bwd", "flops", "gflops",
                "seconds_total", "bytes_halo", "checksum"):
        check(key in rep, "JSON has %s" % key)
    check(rep.get("forward") == "recomputed", "out and lse recomputed (none in the input)")
    with h5py.File(out, "r") as f:
        a = f.attrs
        check(sorted(f) == ["dk", "dq", "dv", "plan"], "output holds dq, dk, dv and plan/")
        check(all(f[x].shape == (H, n, D) and f[x].dtype == np.float32 for x in ("dq", "dk", "dv")),
              "dq, dk, dv float32 in the shape of q")
        check((int(a["n"]), int(a["heads"]), int(a["dim"]), int(a["ranks"])) == (n, H, D, opt.np),
              "attributes n, heads, dim, ranks")
        B, scale, R = int(a["block"]), float(a["scale"]), int(a["random"])
        mode = attr_str(a, "local_mode")
        size, causal = int(a["local_size"]), bool(a["causal"])
        rb, G = f["plan/random_blocks"][()], f["plan/globals"][()]
        got = [f[x][()].astype("f8") for x in ("dq", "dk", "dv")]
    check(list(G) == [0, 150, 151, 152] and B == 32 and R == 2, "pattern recorded")
    mask = spec_mask(n, H, B, mode, size, G, causal, rb)
    want = dense_grad(q, k, v, dout, mask, scale)
    pairs = int(mask.sum())
    check(rep.get("flops") == 10 * D * pairs, "flops = 10 D sum|S(i)| (%s vs %d)" % (rep.get("flops"),
                                                                                 10 * D * pairs))
    for name, g, wnt in zip(("dq", "dk", "dv"), got, want):
        compare(name, g, wnt, 1e-4)

    print("-- out and lse stored by spa run give the same gradients")
    run = os.path.join(w, "grad_run.h5")
    p = launch(opt, ["run", "--input", inp, "--output", run] + GRAD_FLAGS)
    check(p.returncode == 0, "spa run: exit code 0 (got %d)" % p.returncode)
    both = os.path.join(w, "grad_in_fwd.h5")
    with_forward(both, inp, run)
    out2 = os.path.join(w, "grad_out_stored.h5")
    p = launch(opt, ["grad", "--input", both, "--output", out2, "--json"] + GRAD_FLAGS)
    if check(p.returncode == 0, "exit code 0 (got %d)" % p.returncode):
        check(json.loads(p.stdout).get("forward") == "stored", "out and lse read from the input")
        with h5py.File(out2, "r") as f:
            for name, g in zip(("dq", "dk", "dv"), got):
                compare(name + " (stored out, lse)", f[name][()], g, 1e-6)
    check(not temp_files(w), "no temporary file left")
    finish()


def cmd_grad_errors(opt):
    w = opt.workdir
    kept = os.path.join(w, "kept.h5")
    inp = os.path.join(w, "in.h5")
    p = launch(opt, ["gen", "--grad", "--output", inp, "--n", 300, "--heads", 2, "--dim", 8])
    check(p.returncode == 0, "spa gen --grad: exit code 0 (got %d)" % p.returncode)
    run = os.path.join(w, "run.h5")
    p = launch(opt, ["run", "--input", inp, "--output", run] + GRAD_FLAGS)
    check(p.returncode == 0, "spa run: exit code 0 (got %d)" % p.returncode)

    def expect_error(args, words):
        with open(kept, "wb") as fh:
            fh.write(b"the previous output\n")
        p = launch(opt, args + ["--output", kept])
        check(p.returncode == 3, "exit code 3 (got %d)" % p.returncode)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        check(len(lines) == 1, "exactly one line on stderr (got %d)" % len(lines))
        if lines:
            check(lines[0].startswith("spa: error: "), "the line starts with 'spa: error: '")
            for word in words:
                check(word in lines[0], "the message names %s" % word)
        check(read_bytes(kept) == b"the previous output\n", "%s is left as it was" % kept)
        check(not temp_files(w), "no temporary file left in %s" % w)

    print("-- dout missing")
    nodout = os.path.join(w, "no_dout.h5")
    with h5py.File(nodout, "w") as f, h5py.File(inp, "r") as a:
        for x in "qkv":
            f[x] = a[x][()]
    expect_error(["grad", "--input", nodout] + GRAD_FLAGS, ["'dout'"])
    print("-- dout of the wrong shape")
    badshape = os.path.join(w, "dout_shape.h5")
    with h5py.File(badshape, "w") as f, h5py.File(inp, "r") as a:
        for x in "qkv":
            f[x] = a[x][()]
        f["dout"] = a["dout"][()][:, :, :4]
    expect_error(["grad", "--input", badshape] + GRAD_FLAGS, ["'dout'", "[2, 300, 4]", "[2, 300, 8]"])
    print("-- out and lse from another seed")
    both = os.path.join(w, "with_fwd.h5")
    with_forward(both, inp, run)
    expect_error(["grad", "--input", both, "--seed", "1"] + GRAD_FLAGS, ["'out'", "seed"])
    print("-- out and lse from another pattern")
    flags = list(GRAD_FLAGS)
    flags[flags.index("--random") + 1] = "1"
    expect_error(["grad", "--input", both] + flags, ["'out'", "random"])
    print("-- out and lse with no record of their pattern")
    noattr = os.path.join(w, "no_attrs.h5")
    with_forward(noattr, inp, run, drop=("block",))
    expect_error(["grad", "--input", noattr] + GRAD_FLAGS, ["'out'", "block"])
    print("-- lse without out")
    lonely = os.path.join(w, "lse_only.h5")
    with h5py.File(lonely, "w") as f, h5py.File(both, "r") as a:
        for x in ("q", "k", "v", "dout", "lse"):
            f[x] = a[x][()]
    expect_error(["grad", "--input", lonely] + GRAD_FLAGS, ["'lse'", "'out'"])
    print("-- the same flags as the run: accepted")
    p = launch(opt, ["grad", "--input", both, "--output", os.path.join(w, "ok.h5")] + GRAD_FLAGS)
    check(p.returncode == 0, "exit code 0 (got %d)" % p.returncode)
    finish()


# ------------------------------------------------------------------ layout

LAY_N, LAY_H, LAY_D, LAY_B = 300, 2, 8, 32
LAY_NB = (LAY_N + LAY_B - 1) // LAY_B  # 10 blocks, the last one partial


def lay_file(path, attrs=None, **datasets):
    """An HDF5 file holding the given datasets (numpy arrays) and root attributes."""
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def dense_to_sparse(lay, rng=None):
    """dense [Hl, nb, nb] -> (num [Hl, nb], idx [Hl, nb, K]) int32, indices in
    a shuffled order when rng is given, padded with 0."""
    Hl, nb, _ = lay.shape
    K = max(1, int(lay.sum(axis=2).max()))
    num = lay.sum(axis=2).astype("i4")
    idx = np.zeros((Hl, nb, K), "i4")
    for h in range(Hl):
        for c in range(nb):
            b = np.nonzero(lay[h, c])[0]
            if rng is not None:
                rng.shuffle(b)
            idx[h, c, :len(b)] = b
    return num, idx


def cmd_layout_errors(opt):
    """Every malformed layout: exit 3, one line naming the dataset, the old
    output untouched, no temporary file left."""
    w = opt.workdir
    good = os.path.join(w, "good.h5")
    out = os.path.join(w, "kept.h5")
    write_input(good, shape=(LAY_H, LAY_N, LAY_D))
    nb = LAY_NB
    ok = np.zeros((1, nb, nb), "i1")
    ok[0, np.arange(nb), np.arange(nb)] = 1
    num, idx = dense_to_sparse(ok)

    def with_value(a, where, v):
        a = a.copy()
        a[where] = v
        return a

    bad = {}  # name -> (datasets, attrs, words)
    bad["dense_value_2"] = (dict(layout=with_value(ok, (0, 3, 4), 2)), None,
                            ["'layout'", "[0, 3, 4]", "0 or 1"])
    bad["dense_value_negative"] = (dict(layout=with_value(ok, (0, 9, 0), -1)), None, ["'layout'"])
    bad["dense_float"] = (dict(layout=ok.astype("f4")), None, ["'layout'"])
    bad["dense_rank_2"] = (dict(layout=ok[0]), None, ["'layout'", "[10, 10]"])
    bad["dense_columns"] = (dict(layout=ok[:, :, :9]), None, ["'layout'", "[1, 10, 9]"])
    bad["dense_nb_mismatch"] = (dict(layout=np.ones((1, 11, 11), "i1")), None,
                                ["'layout'", "[1, 11, 11]", "ceil"])
    bad["dense_heads_3"] = (dict(layout=np.ones((3, nb, nb), "u1")), None, ["'layout'", "heads"])
    bad["dense_and_sparse"] = (dict(layout=ok, kv_num_blocks=num, kv_indices=idx), None,
                               ["'layout'", "'kv_num_blocks'"])
    bad["block_attribute"] = (dict(layout=ok), {"block": 64}, ["'block'", "64"])
    bad["block_attribute_text"] = (dict(layout=ok), {"block": "32"}, ["'block'"])
    bad["index_outside"] = (dict(kv_num_blocks=num, kv_indices=with_value(idx, (0, 2, 0), nb)), None,
                            ["'kv_indices'", "[0, 2, 0]"])
    bad["index_negative"] = (dict(kv_num_blocks=num, kv_indices=with_value(idx, (0, 5, 0), -2)), None,
                             ["'kv_indices'", "-2"])
    rep_idx = np.zeros((1, nb, 2), "i4")
    rep_num = np.ones((1, nb), "i4")
    rep_num[0, 4] = 2  # row 4 lists block 0 twice
    bad["index_repeated"] = (dict(kv_num_blocks=rep_num, kv_indices=rep_idx), None,
                             ["'kv_indices'", "repeats"])
    bad["num_beyond_k"] = (dict(kv_num_blocks=with_value(num, (0, 1), 2), kv_indices=idx), None,
                           ["'kv_num_blocks'", "[0, 1]"])
    bad["num_negative"] = (dict(kv_num_blocks=with_value(num, (0, 7), -1), kv_indices=idx), None,
                           ["'kv_num_blocks'"])
    bad["indices_missing"] = (dict(kv_num_blocks=num), None, ["'kv_indices'"])
    bad["num_missing"] = (dict(kv_indices=idx), None, ["'kv_num_blocks'"])
    bad["full_indices_missing"] = (dict(kv_num_blocks=num, kv_indices=idx, full_kv_num_blocks=num),
                                   None, ["'full_kv_indices'"])
    bad["full_num_missing"] = (dict(kv_num_blocks=num, kv_indices=idx, full_kv_indices=idx), None,
                               ["'full_kv_num_blocks'"])
    bad["full_repeated"] = (dict(kv_num_blocks=num, kv_indices=idx, full_kv_num_blocks=rep_num,
                                 full_kv_indices=rep_idx), None, ["'full_kv_indices'", "repeats"])
    bad["num_shape"] = (dict(kv_num_blocks=num[:, :9], kv_indices=idx), None,
                        ["'kv_num_blocks'", "[1, 9]"])
    bad["indices_rank"] = (dict(kv_num_blocks=num, kv_indices=idx[0]), None, ["'kv_indices'"])
    bad["heads_differ"] = (dict(kv_num_blocks=num, kv_indices=np.concatenate([idx, idx])), None,
                           ["'kv_indices'", "heads"])
    bad["num_float"] = (dict(kv_num_blocks=num.astype("f8"), kv_indices=idx), None, ["'kv_num_blocks'"])
    bad["no_datasets"] = (dict(other=np.zeros(3)), None, ["'layout'", "'kv_num_blocks'"])
    bad["layout_is_group"] = (None, None, ["'layout'"])

    def make(path, datasets, attrs):
        if datasets is None:  # a group called layout
            with h5py.File(path, "w") as f:
                f.create_group("layout")
        else:
            lay_file(path, attrs, **datasets)

    def expect(args, words, keep):
        before = read_bytes(keep) if keep else None
        p = launch(opt, args)
        check(p.returncode == 3, "exit code 3 (got %d)" % p.returncode)
        check(p.stdout.strip() == "", "nothing on stdout")
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        check(len(lines) == 1, "exactly one line on stderr (got %d)" % len(lines))
        if lines:
            check(lines[0].startswith("spa: error: "), "the line starts with 'spa: error: '")
            for word in words:
                check(word in lines[0], "the message names %s" % word)
        if keep:
            check(read_bytes(keep) == before, "%s is left byte for byte as it was" % keep)
        check(not temp_files(w), "no temporary file left in %s" % w)

    flags = ["--block", str(LAY_B), "--local-blocks", "0", "--globals", "none", "--random", "0"]
    for k, (name, (datasets, attrs, words)) in enumerate(bad.items()):
        print("-- layout error:", name)
        path = os.path.join(w, "lay_%s.h5" % name)
        make(path, datasets, attrs)
        with open(out, "wb") as fh:
            fh.write(b"the previous output\n")
        # alternate the file input and the synthetic one (n from --n)
        if k % 2 == 0:
            args = ["run", "--input", good, "--output", out, "--layout", path] + flags
        else:
            args = ["run", "--n", str(LAY_N), "--heads", str(LAY_H), "--dim", str(LAY_D),
                    "--output", out, "--layout", path] + flags
        expect(args, words, out)
    print("-- layout error through spa plan and spa bench")
    path = os.path.join(w, "lay_dense_value_2.h5")
    expect(["plan", "--n", str(LAY_N), "--heads", "2", "--layout", path] + flags,
           ["'layout'"], None)
    expect(["bench", "--n", str(LAY_N), "--heads", "2", "--dim", "8", "--reps", "1",
            "--layout", path] + flags, ["'layout'"], None)
    print("-- missing layout file, and one that is not HDF5")
    expect(["run", "--input", good, "--layout", os.path.join(w, "no_such_layout.h5")] + flags,
           ["no_such_layout.h5"], None)
    garbage = os.path.join(w, "garbage_layout.h5")
    with open(garbage, "w") as fh:
        fh.write("not hdf5\n")
    expect(["run", "--input", good, "--layout", garbage] + flags, ["not an HDF5 file"], None)
    print("-- a layout with 1 head for n = 300 does not fit n = 400")
    lay_file(os.path.join(w, "lay_ok.h5"), layout=ok)
    expect(["run", "--n", "400", "--heads", "2", "--dim", "8", "--layout",
            os.path.join(w, "lay_ok.h5")] + flags, ["'layout'", "[1, 10, 10]"], None)
    finish()


def layout_mask(lay, n, B, H, causal):
    """Token mask [H, n, n] of a block layout [Hl, nb, nb]."""
    blk = np.arange(n) // B
    masks = []
    for h in range(H):
        L = lay[h if lay.shape[0] > 1 else 0].astype(bool)
        m = L[blk[:, None], blk[None, :]]
        if causal:
            m = m & (np.arange(n)[None, :] <= np.arange(n)[:, None])
        masks.append(m)
    return np.array(masks)


def dense_masked(q, k, v, mask, scale):
    """dense() with empty rows: out 0, lse -inf."""
    s = scale * np.einsum("hid,hjd->hij", q, k)
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=2, keepdims=True)
    empty = ~mask.any(axis=2, keepdims=True)
    m = np.where(empty, 0.0, m)
    p = np.where(mask, np.exp(s - m), 0.0)
    z = p.sum(axis=2, keepdims=True)
    out = np.einsum("hij,hjd->hid", p / np.where(empty, 1.0, z), v)
    lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1.0, z)))[..., 0]
    return out, lse


def compare_lse(name, got, want, rel):
    """lse with empty rows: -inf exactly where expected, the rest compared."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    ninf = np.isneginf(want)
    check(np.array_equal(np.isneginf(got), ninf),
          "%s is -inf exactly on the %d empty rows" % (name, int(ninf.sum())))
    compare(name + " (finite rows)", np.where(ninf, 0.0, got), np.where(ninf, 0.0, want), rel)


def read_out(path):
    with h5py.File(path, "r") as f:
        return f["out"][()], f["lse"][()]


def cmd_layout(opt):
    w = opt.workdir
    n, H, D, B, nb = LAY_N, LAY_H, LAY_D, LAY_B, LAY_NB
    inp = os.path.join(w, "in.h5")
    write_input(inp, shape=(H, n, D), seed=3)
    with h5py.File(inp, "r") as f:
        q, k, v = (f[x][()].astype("f8") for x in "qkv")
    scale = 1 / np.sqrt(D)
    rng = np.random.default_rng(7)
    base = ["--block", str(B), "--local-blocks", "0", "--globals", "none", "--random", "0"]

    def run(out, flags):
        if os.path.exists(out):
            os.remove(out)
        p = launch(opt, ["run", "--input", inp, "--output", out] + flags)
        return check(p.returncode == 0, "exit code 0 for %s (got %d)" % (" ".join(flags), p.returncode))

    for causal in (False, True):
        for heads in (1, H):
            tag = "%s_h%d" % ("causal" if causal else "full", heads)
            print("-- layout, dense against sparse against numpy:", tag)
            lay = (rng.random((heads, nb, nb)) < 0.3).astype(bool)
            lay[0, 4, :] = False  # an empty row
            lay[0, 0, :] = True   # a dense row
            dense_f, sparse_f = os.path.join(w, "dense_%s.h5" % tag), os.path.join(w, "sparse_%s.h5" % tag)
            lay_file(dense_f, {"block": B}, layout=lay)  # bool: h5py's enum
            # sparse: a random split of every row into a partial and a full
            # list, sharing some blocks (the row is their union), shuffled
            part = lay & (rng.random(lay.shape) < 0.6)
            full = (lay & ~part) | (part & (rng.random(lay.shape) < 0.3))
            pn, pi = dense_to_sparse(part, rng)
            fn, fi = dense_to_sparse(full, rng)
            pi = np.concatenate([pi, np.full(pi.shape[:2] + (2,), 7, "i4")], axis=2)  # padding is ignored
            lay_file(sparse_f, None, kv_num_blocks=pn, kv_indices=pi, full_kv_num_blocks=fn,
                     full_kv_indices=fi)
            extra = ["--causal"] if causal else []
            o1, o2 = os.path.join(w, "out_dense_%s.h5" % tag), os.path.join(w, "out_sparse_%s.h5" % tag)
            if not (run(o1, base + extra + ["--layout", dense_f]) and
                    run(o2, base + extra + ["--layout", sparse_f])):
                continue
            a_out, a_lse = read_out(o1)
            b_out, b_lse = read_out(o2)
            check(np.array_equal(a_out, b_out) and np.array_equal(a_lse, b_lse),
                  "dense and sparse forms give the same out and lse, bit for bit")
            ref_out, ref_lse = dense_masked(q, k, v, layout_mask(lay, n, B, H, causal), scale)
            compare("out", a_out, ref_out, 1e-5)
            compare_lse("lse", a_lse, ref_lse, 1e-5)
            check(np.all(a_out[0, 4 * B:5 * B] == 0), "the empty row block has out = 0")
            with h5py.File(o1, "r") as f:
                a = f.attrs
                check(attr_str(a, "layout") == dense_f, "attribute layout names the file")
                check(attr_str(a, "local_blocks_spec") == "0" and attr_str(a, "random_spec") == "0",
                      "attributes local_blocks_spec and random_spec hold the flags")
                check(attr_str(a, "local_mode") == "none", "local_mode is none")
                check(f["plan/random_blocks"].shape == (H, nb, 0), "random_blocks is [H, nb, 0]")
                num, idx = f["plan/kv_num_blocks"][()], f["plan/kv_indices"][()]
                check(num.dtype == np.int32 and idx.dtype == np.int32, "plan layout is int32")
                got = np.zeros(lay.shape, bool)
                for h in range(num.shape[0]):
                    for c in range(nb):
                        got[h, c, idx[h, c, :num[h, c]]] = True
                check(num.shape == (heads, nb) and np.array_equal(got, lay),
                      "plan/kv_num_blocks and plan/kv_indices hold the layout")

    print("-- the output records every rule")
    out = os.path.join(w, "out_rules.h5")
    flags = ["--block", str(B), "--local-blocks", "3@0:1", "--radius", "9@1:2", "--random", "2@0:1",
             "--random", "5@1:2", "--stride", "17", "--summary", "32:4@1:2", "--dilated", "64:2,16:1",
             "--globals", "0:3"]
    if run(out, flags):
        with h5py.File(out, "r") as f:
            a = f.attrs
            want = {"local_blocks_spec": "3@0:1", "radius_spec": "9@1:2", "random_spec": "2@0:1 5@1:2",
                    "stride_spec": "17", "summary_spec": "32:4@1:2", "dilated_spec": "64:2,16:1"}
            for key, val in want.items():
                check(attr_str(a, key) == val, "attribute %s = %r (got %r)" % (key, val, attr_str(a, key)))
            check(attr_str(a, "local_mode") == "per-head" and int(a["local_size"]) == -1,
                  "local_mode per-head, local_size -1")
            check(int(a["random"]) == 5, "random is the largest per-head count")
            check("layout" not in a, "no layout attribute without --layout")
            rb = f["plan/random_blocks"][()]
            check(rb.shape == (H, nb, 5), "random_blocks is [H, nb, 5]")
            check(np.all(rb[0, :, 2:] == -1), "head 0 (2 random blocks) is -1 padded")
            check(np.any(rb[1, :, 2:] >= 0), "head 1 draws more than head 0's 2")

    print("-- export -> import round trip")
    cases = [
        ("default", ["--block", str(B)], []),
        ("causal", ["--block", str(B), "--causal", "--local-blocks", "3", "--random", "2",
                    "--globals", "0:32"], ["--causal"]),
        ("per_head", ["--block", str(B), "--local-blocks", "3@0:1", "--local-blocks", "1@1:2",
                      "--random", "1@0:1", "--random", "3@1:2", "--globals", "256:300"], []),
        ("layout_itself", ["--block", str(B), "--local-blocks", "0", "--globals", "none", "--random",
                           "0", "--layout", os.path.join(w, "dense_causal_h2.h5"), "--causal"],
         ["--causal"]),
    ]
    for name, pat, extra in cases:
        print("--- round trip:", name)
        lay = os.path.join(w, "export_%s.h5" % name)
        if os.path.exists(lay):
            os.remove(lay)
        p = launch(opt, ["plan", "--n", str(n), "--heads", str(H), "--dim", str(D),
                         "--export-layout", lay] + pat)
        if not check(p.returncode == 0 and os.path.exists(lay), "plan --export-layout writes %s" % lay):
            continue
        check(not temp_files(w), "no temporary file left")
        with h5py.File(lay, "r") as f:
            for ds, rank in (("full_kv_num_blocks", 2), ("full_kv_indices", 3), ("kv_num_blocks", 2),
                             ("kv_indices", 3)):
                check(ds in f and f[ds].dtype == np.int32 and f[ds].shape[:2] == (H, nb)
                      and f[ds].ndim == rank, "%s is int32 [H, nb%s]" % (ds, ", K" if rank == 3 else ""))
            check(int(f.attrs.get("block", -1)) == B, "attribute block = %d" % B)
            if "kv_num_blocks" in f and "full_kv_num_blocks" in f:
                pn, pi = f["kv_num_blocks"][()], f["kv_indices"][()]
                fn, fi = f["full_kv_num_blocks"][()], f["full_kv_indices"][()]
                disjoint = all(not set(pi[h, c, :pn[h, c]]) & set(fi[h, c, :fn[h, c]])
                               for h in range(H) for c in range(nb))
                check(disjoint, "full and partial lists are disjoint")
        o1, o2 = os.path.join(w, "rt_orig_%s.h5" % name), os.path.join(w, "rt_back_%s.h5" % name)
        if not (run(o1, pat) and run(o2, base + extra + ["--layout", lay])):
            continue
        a_out, a_lse = read_out(o1)
        b_out, b_lse = read_out(o2)
        compare("out", b_out, a_out, 1e-5)
        compare_lse("lse", b_lse, a_lse, 1e-5)
    finish()


def attr_str(attrs, key):
    v = attrs.get(key)
    if isinstance(v, bytes):
        return v.decode()
    return None if v is None else str(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spa", required=True)
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--data")
    ap.add_argument("--make-sample")
    ap.add_argument("check", choices=["errors", "regress", "oracle", "sample", "gen", "layout_errors",
                                      "layout", "grad", "grad_errors"])
    opt = ap.parse_args()
    os.makedirs(opt.workdir, exist_ok=True)
    for stale in temp_files(opt.workdir):
        os.remove(stale)
    {"errors": cmd_errors, "regress": cmd_regress, "oracle": cmd_oracle,
     "sample": cmd_sample, "gen": cmd_gen, "layout_errors": cmd_layout_errors,
     "layout": cmd_layout, "grad": cmd_grad, "grad_errors": cmd_grad_errors}[opt.check](opt)


if __name__ == "__main__":
    main()
