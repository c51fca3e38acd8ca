#!/usr/bin/env python3
"""Drives `spa layer` for its tests (issue 12).

    layer_test.py [launch options] oracle   y, out, lse against numpy (float64)
    layer_test.py [launch options] errors   bad files and flags: exit 3 naming the
                                            dataset, or exit 2; no output clobbered

Launch options: --spa EXE --mpiexec EXE --np P --workdir DIR. With --np 1
spa runs without a launcher. The oracle projects x in float64, builds the
pattern's mask token by token from SPEC section 1 (the random blocks read
from `spa run --output`'s plan/random_blocks for the same flags), and runs
dense masked attention and the output projection in numpy.
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


def make_layer(path, n, dm, H, D, bias=True, heads_attr=False, seed=0, edit=None):
    """A layer file in nn.Linear layout; edit(dict) may change or drop datasets."""
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(dm)
    d = {"x": rng.standard_normal((n, dm)).astype("f4"),
         "wq": (s * rng.standard_normal((H * D, dm))).astype("f4"),
         "wk": (s * rng.standard_normal((H * D, dm))).astype("f4"),
         "wv": (s * rng.standard_normal((H * D, dm))).astype("f4"),
         "wo": (s * rng.standard_normal((dm, H * D))).astype("f4")}
    if bias:
        for b, m in (("bq", H * D), ("bk", H * D), ("bv", H * D), ("bo", dm)):
            d[b] = (0.1 * rng.standard_normal(m)).astype("f4")
    if edit:
        edit(d)
    with h5py.File(path, "w") as f:
        for name, a in d.items():
            f[name] = a
        if heads_attr:
            f.attrs["heads"] = H
    return d


def mask(n, H, B, local, G, causal, rb):
    """S(i) of SPEC section 1: local (("blocks", W) or ("radius", R)), globals, random, causal."""
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    kind, size = local
    m0 = np.abs(i // B - j // B) <= (size - 1) // 2 if kind == "blocks" else np.abs(i - j) <= size
    isg = np.zeros(n, bool)
    isg[G] = True
    m0 = m0 | isg[None, :] | isg[:, None]
    out = []
    for h in range(H):
        m = m0.copy()
        for c in range(rb.shape[1]):
            for b in rb[h, c]:
                if b >= 0:
                    m[c * B:(c + 1) * B, b * B:(b + 1) * B] = True
        out.append(m & (j <= i) if causal else m)
    return np.array(out)


def oracle_layer(d, H, D, msk, scale):
    """float64 numpy: projections, dense masked attention, output projection."""
    f = {k: v.astype("f8") for k, v in d.items()}
    n = f["x"].shape[0]

    def proj(w, b):
        y = f["x"] @ f[w].T + (f[b] if b in f else 0.0)
        return y.reshape(n, H, D).transpose(1, 0, 2)  # [H, n, D]
    q, k, v = proj("wq", "bq"), proj("wk", "bk"), proj("wv", "bv")
    s = scale * np.einsum("hid,hjd->hij", q, k)
    s = np.where(msk, s, -np.inf)
    mx = s.max(axis=2, keepdims=True)
    p = np.exp(s - mx)
    z = p.sum(axis=2, keepdims=True)
    out = np.einsum("hij,hjd->hid", p / z, v)
    lse = (mx + np.log(z))[..., 0]
    y = out.transpose(1, 0, 2).reshape(n, H * D) @ f["wo"].T + (f["bo"] if "bo" in f else 0.0)
    return y, out, lse


def close(name, got, want, tol):
    err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
    print("  %s: maxdiff (relative to max |want|) %.3g" % (name, err))
    if not check(got.shape == want.shape and err < tol, "%s: maxdiff %.3g >= %g" % (name, err, tol)):
        idx = np.unravel_index(np.argmax(np.abs(got - want)), want.shape)
        print("  first values got", got.ravel()[:4], "want", want.ravel()[:4], "worst at", idx)


def cmd_oracle(opt):
    w = opt.workdir
    n, dm, H, D, B = 200, 24, 2, 8, 16
    cases = [
        # name, pattern flags, local rule, globals, causal, biases, heads from the attribute
        ("bigbird", ["--block", B, "--random", 2, "--seed", 3], ("blocks", 3), None, False, True, False),
        ("radius_causal", ["--block", B, "--radius", 20, "--globals", "5,150", "--random", 1, "--causal"],
         ("radius", 20), [5, 150], True, False, True),
    ]
    for name, flags, local, G, causal, bias, attr in cases:
        inp, outp, plan = (os.path.join(w, "%s_%s.h5" % (name, s)) for s in ("in", "out", "plan"))
        d = make_layer(inp, n, dm, H, D, bias=bias, heads_attr=attr, seed=len(name))
        heads = [] if attr else ["--heads", H]
        p = launch(opt, ["layer", "--input", inp, "--output", outp, "--save-attention", "--json"] + heads + flags)
        if not check(p.returncode == 0, "%s: spa layer exit %d" % (name, p.returncode)):
            continue
        # the plan of these flags (random blocks), from spa run on synthetic input
        p = launch(opt, ["run", "--n", n, "--heads", H, "--dim", D, "--output", plan] + flags)
        if not check(p.returncode == 0, "%s: spa run exit %d" % (name, p.returncode)):
            continue
        with h5py.File(plan, "r") as f:
            rb = f["plan/random_blocks"][...]
            Gf = f["plan/globals"][...]
        if G is not None:
            check(list(Gf) == G, "%s: globals %s, expected %s" % (name, list(Gf), G))
        msk = mask(n, H, B, local, Gf.astype(int), causal, rb)
        y, out, lse = oracle_layer(d, H, D, msk, 1.0 / np.sqrt(D))
        with h5py.File(outp, "r") as f:
            check(f["y"].dtype == np.float32 and f["y"].shape == (n, dm), "%s: y is float32 [n, d_model]" % name)
            close(name + " y", f["y"][...].astype("f8"), y, 2e-5)
            close(name + " out", f["out"][...].astype("f8"), out, 2e-5)
            close(name + " lse", f["lse"][...].astype("f8"), lse, 2e-5)
            check(int(f.attrs["heads"]) == H and int(f.attrs["dim"]) == D and
                  int(f.attrs["d_model"]) == dm and int(f.attrs["ranks"]) == opt.np,
                  "%s: root attributes heads, dim, d_model, ranks" % name)
        check(not glob.glob(os.path.join(w, ".*.tmp.*")), "%s: no temporary file left" % name)
    finish()


def cmd_errors(opt):
    w = opt.workdir
    n, dm, H, D = 100, 12, 2, 4
    keep = os.path.join(w, "keep.h5")

    def expect(args, code, words, label):
        with open(keep, "wb") as f:
            f.write(b"precious")
        p = launch(opt, ["layer"] + args + ["--output", keep])
        check(p.returncode == code, "%s: exit %d, expected %d" % (label, p.returncode, code))
        lines = [l for l in p.stderr.splitlines() if l.startswith("spa: error:")]
        check(len(lines) == 1, "%s: one 'spa: error:' line, got %d" % (label, len(lines)))
        for word in words:
            check(any(word in l for l in lines), "%s: message names %r" % (label, word))
        with open(keep, "rb") as f:
            check(f.read() == b"precious", "%s: the existing output was replaced" % label)
        check(not glob.glob(os.path.join(w, ".*.tmp.*")), "%s: a temporary file is left" % label)

    def case(label, edit, code, words, extra=("--heads", H)):
        path = os.path.join(w, label + ".h5")
        make_layer(path, n, dm, H, D, edit=edit)
        expect(["--input", path] + list(extra), code, words, label)

    def shape(name, s):
        return lambda d: d.__setitem__(name, np.zeros(s, "f4"))

    case("wk_shape", shape("wk", (H * D, dm - 1)), 3, ["'wk'", "[8, 11]"])
    case("no_heads", None, 2, ["--heads"], extra=())
    case("bad_pattern", None, 2, ["--local-blocks"], extra=("--heads", H, "--local-blocks", 2))
    if opt.quick:  # the same checks at several ranks: one message, every rank exits
        finish()
    case("wv_rows", shape("wv", (H * D + 1, dm)), 3, ["'wv'"])
    case("wo_shape", shape("wo", (dm, H * D - 1)), 3, ["'wo'"])
    case("wq_cols", shape("wq", (H * D, dm + 1)), 3, ["'wq'", "d_model"])
    case("bq_shape", shape("bq", (H * D + 2,)), 3, ["'bq'"])
    case("bo_shape", shape("bo", (dm, 1)), 3, ["'bo'"])
    case("x_rank", shape("x", (2, n, dm)), 3, ["'x'"])
    case("x_int", lambda d: d.__setitem__("x", np.zeros((n, dm), "i4")), 3, ["'x'", "floating"])
    case("wv_missing", lambda d: d.pop("wv"), 3, ["'wv'", "missing"])

    def nan_wk(d):
        d["wk"][3, 5] = np.nan
    case("wk_nan", nan_wk, 3, ["'wk'", "non-finite"])

    def odd(d):  # 7 rows of wq, wk, wv and 7 columns of wo: not a multiple of 2 heads
        for k in ("wq", "wk", "wv"):
            d[k] = d[k][:7]
        d["wo"] = d["wo"][:, :7]
        for k in ("bq", "bk", "bv"):
            d[k] = d[k][:7]
    case("wq_heads", odd, 3, ["'wq'", "multiple"])
    case("dim_flag", None, 2, ["--dim"], extra=("--heads", H, "--dim", D))
    case("n_flag", None, 2, ["--n"], extra=("--heads", H, "--n", n))
    expect(["--input", os.path.join(w, "absent.h5"), "--heads", H], 3, ["absent.h5"], "absent")
    noth5 = os.path.join(w, "text.h5")
    with open(noth5, "w") as f:
        f.write("not hdf5\n")
    expect(["--input", noth5, "--heads", H], 3, ["not an HDF5 file"], "not_hdf5")
    p = launch(opt, ["layer", "--heads", H])
    check(p.returncode == 2, "no --input: exit %d, expected 2" % p.returncode)
    finish()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spa", required=True)
    ap.add_argument("--mpiexec", default="mpiexec")
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--quick", action="store_true", help="errors: the first few cases only")
    ap.add_argument("check", choices=["oracle", "errors"])
    opt = ap.parse_args()
    os.makedirs(opt.workdir, exist_ok=True)
    for stale in glob.glob(os.path.join(opt.workdir, ".*.tmp.*")):
        os.remove(stale)
    {"oracle": cmd_oracle, "errors": cmd_errors}[opt.check](opt)


if __name__ == "__main__":
    main()
