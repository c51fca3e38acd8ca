#!/usr/bin/python3
"""Writes the seed corpus of the fuzz harnesses into corpus/<harness>/.

Run from anywhere: /usr/bin/python3 tests/fuzz/make_corpus.py. The seeds are
small on purpose (HDF5 images of a few KB): mutations then reach the
metadata spa checks. Files use HDF5's earliest format (no checksums, so a
flipped byte reaches the parser) and a few its latest one.
"""
import io
import os
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)


def image(fill, libver="earliest"):
    bio = io.BytesIO()
    with h5py.File(bio, "w", libver=libver) as f:
        fill(f)
    return bio.getvalue()


def save(harness, name, data):
    d = os.path.join(HERE, "corpus", harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(data)


def qkv(shape, dtype="f4", **kw):
    def fill(f):
        for name in "qkv":
            f.create_dataset(name, data=rng.standard_normal(shape).astype(dtype), **kw)
    return fill


# ------------------------------------------------------------------ input
save("input", "f32_2d", image(qkv((4, 2))))
save("input", "f32_3d", image(qkv((2, 3, 2))))
save("input", "f32_4d", image(qkv((1, 2, 2, 2))))
save("input", "f64_3d", image(qkv((2, 2, 2), "f8")))
save("input", "f16_3d", image(qkv((2, 2, 2), "f2")))
save("input", "f32_latest", image(qkv((2, 3, 2)), "latest"))
save("input", "f32_chunked_gzip", image(qkv((2, 4, 2), chunks=(1, 2, 2), compression="gzip")))
save("input", "f32_shuffle_fletcher", image(qkv((2, 4, 2), chunks=(1, 4, 2), shuffle=True,
                                                fletcher32=True)))
save("input", "f32_compact", image(qkv((1, 3, 2), compression=None)))


def with_nan(f):
    qkv((2, 2))(f)
    d = f["k"][...]
    d[1, 0] = np.nan
    f["k"][...] = d


save("input", "nan", image(with_nan))


def mismatch(f):
    f["q"] = np.zeros((2, 3, 2), "f4")
    f["k"] = np.zeros((2, 2, 2), "f4")
    f["v"] = np.zeros((2, 3, 2), "f4")


save("input", "shape_mismatch", image(mismatch))


def ints(f):
    for name in "qkv":
        f[name] = np.zeros((2, 2), "i4")


save("input", "int_type", image(ints))


def rank1(f):
    for name in "qkv":
        f[name] = np.zeros(4, "f4")


save("input", "rank1", image(rank1))


def group_q(f):
    f.create_group("q")
    f["k"] = np.zeros((2, 2), "f4")
    f["v"] = np.zeros((2, 2), "f4")


save("input", "group_q", image(group_q))


def bigger_n(f):
    qkv((1, 33, 3))(f)


save("input", "f32_odd_n", image(bigger_n))


# ----------------------------------------------------------------- layout
def params(block, nb, cut, heads):
    """The harness's 4 parameter bytes for these values."""
    return bytes([block - 1, nb - 1, cut, heads - 1])


def dense(H, nb, dtype="u1", block_attr=None):
    def fill(f):
        lay = (rng.random((H, nb, nb)) < 0.4).astype(dtype)
        f["layout"] = lay
        if block_attr is not None:
            f.attrs["block"] = block_attr
    return fill


def sparse(H, nb, K, full=False, block_attr=None):
    def fill(f):
        num = np.zeros((H, nb), "i4")
        idx = np.zeros((H, nb, K), "i4")
        for h in range(H):
            for c in range(nb):
                m = int(rng.integers(0, min(K, nb) + 1))
                num[h, c] = m
                idx[h, c, :m] = rng.choice(nb, m, replace=False)
        f["kv_num_blocks"] = num
        f["kv_indices"] = idx
        if full:
            f["full_kv_num_blocks"] = np.ones((H, nb), "i4")
            f["full_kv_indices"] = np.tile(np.arange(nb, dtype="i4")[None, :, None], (H, 1, 1))
        if block_attr is not None:
            f.attrs["block"] = block_attr
    return fill


save("layout", "dense_u8", params(4, 4, 0, 1) + image(dense(1, 4)))
save("layout", "dense_bool_h2", params(2, 3, 1, 2) + image(
    lambda f: f.create_dataset("layout", data=rng.random((2, 3, 3)) < 0.5)))
save("layout", "dense_i64_attr", params(8, 5, 3, 2) + image(dense(2, 5, "i8", block_attr=8)))
save("layout", "dense_latest", params(4, 4, 0, 1) + image(dense(1, 4), "latest"))
save("layout", "sparse", params(4, 6, 0, 3) + image(sparse(3, 6, 3)))
save("layout", "sparse_full", params(2, 4, 1, 1) + image(sparse(1, 4, 2, full=True, block_attr=2)))
save("layout", "sparse_h1_of_4", params(1, 8, 0, 4) + image(sparse(1, 8, 4)))
save("layout", "empty_file", params(4, 4, 0, 1) + image(lambda f: None))

# -------------------------------------------------------------------- cli
# mode byte 0: argv split at NULs; 1: n (2 bytes) + a --globals spec;
# 2: H (1 byte) + rule values, each led by its rule's byte (0 local-blocks,
# 1 radius, 2 random, 3 stride, 4 summary, 5 dilated)
argvs = {
    "run_small": ["run", "--n", "1024", "--heads", "2", "--dim", "8"],
    "plan_rules": ["plan", "--n", "4096", "--heads", "4", "--local-blocks", "3@0:2",
                   "--radius", "20@2:4", "--stride", "97@1:2", "--summary", "64:4@0:1",
                   "--dilated", "256:4,1024:8", "--globals", "0:32,4000", "--causal"],
    "bench_eq": ["bench", "--n=2048", "--block=32", "--random=2", "--seed=7", "--scale=0.5",
                 "--reps", "2", "--warmup", "0", "--no-overlap"],
    "gen": ["gen", "--output", "x.h5", "--n", "64", "--seed", "3"],
    "run_input": ["run", "--input", "in.h5", "--output", "out.h5", "--json", "--threads", "2",
                  "--layout", "l.h5", "--progress"],
    "plan_export": ["plan", "--n", "1000", "--export-layout", "l.h5", "--stats", "--ranks", "3",
                    "--globals", "none", "--local-blocks", "0", "--random", "0"],
    "help": ["--help"],
    "run_help": ["run", "--help"],
    "version": ["--version"],
}
for name, args in argvs.items():
    save("cli", "argv_" + name, b"\0" + "\0".join(args).encode())
for name, (n, spec) in {"list": (1000, "0,250,500,750"), "ranges": (65535, "0:64,65000:65535"),
                        "none": (10, "none"), "overlap": (500, "3:9,5:12,7")}.items():
    save("cli", "globals_" + name, b"\1" + bytes([(n - 1) >> 8, (n - 1) & 255]) + spec.encode())
for name, (H, vals) in {"per_head": (4, [(0, "3@0:2"), (1, "5@2:4"), (3, "7")]),
                        "summary_dilated": (8, [(4, "64:8"), (5, "256:4,1024:8@0:4"),
                                                (5, "128:2@4:8"), (2, "2")])}.items():
    data = b"\0".join(bytes([r]) + v.encode() for r, v in vals)
    save("cli", "rules_" + name, b"\2" + bytes([H - 1]) + data)
print("corpus written", file=sys.stderr)
