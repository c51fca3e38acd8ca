"""spa - sparse parallel attention, from Python (ctypes binding of libspa).

    out, lse = spa.attention(q, k, v)                   # [H, n, D] float32 each
    report = spa.plan(1 << 20, heads=4, ranks=64)       # what it costs, before it runs
    dq, dk, dv = spa.attention_backward(q, k, v, out, lse, dout)
    y = spa.layer(x, wq, wk, wv, wo, heads=8)           # nn.Linear weights
    o = spa.attention_torch(tq, tk, tv)                 # torch.autograd, needs PyTorch

Under mpirun with mpi4py, pass comm=MPI.COMM_WORLD and each rank's own rows
[t0, t1) = spa.shard(n, comm=comm); the result is the same as on one rank.
A bad argument raises ValueError with spa's message; nothing here calls
MPI_Abort or exits. Without mpi4py, MPI is initialised on first use (one
process, MPI_COMM_SELF) and finalised at exit.
"""
import atexit
import ctypes
import ctypes.util
import os

import numpy as np

__all__ = ["attention", "attention_backward", "attention_torch", "layer", "plan", "shard", "version",
           "SpaError", "PIX_LOCAL", "PIX_GLOBAL", "PIX_RANDOM", "PIX_OTHER"]

_USAGE, _INPUT = 2, 3
# the kinds of a spa.plan mask pixel, ORed (SPA_PLAN_PIX_*; OTHER: strided,
# summary, dilated and layout rules)
PIX_LOCAL, PIX_GLOBAL, PIX_RANDOM, PIX_OTHER = 1, 2, 4, 8
_RULES = {"local_blocks": 0, "radius": 1, "random": 2, "stride": 3, "summary": 4, "dilated": 5}


class SpaError(RuntimeError):
    """An internal, MPI or system error inside libspa (bad arguments raise ValueError)."""


class _ConfigHead(ctypes.Structure):
    # the leading fields of spa_config (include/spa.h), in order; the rest of
    # the struct is allocated with spa_config_sizeof() and left to libspa
    _fields_ = [("n", ctypes.c_int64), ("heads", ctypes.c_int32), ("dim", ctypes.c_int32),
                ("block", ctypes.c_int32), ("local_blocks", ctypes.c_int32),
                ("radius", ctypes.c_int64), ("random", ctypes.c_int32), ("seed", ctypes.c_uint64),
                ("causal", ctypes.c_int), ("scale", ctypes.c_float), ("fetch_bytes", ctypes.c_int64)]


class _Weights(ctypes.Structure):
    _fields_ = [("d_model", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo")]


class _PlanKeys(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int64) for f in ("min", "max", "pairs")]


class _PlanRank(ctypes.Structure):
    _fields_ = [(f, ctypes.c_int64) for f in ("block_begin", "block_end", "bytes_halo", "bytes_global",
                                              "bytes_rma", "fetched_blocks", "batches")]


class _PlanHops(ctypes.Structure):
    _fields_ = [("sources", ctypes.c_int64), ("pairs", ctypes.c_int64), ("reachable", ctypes.c_int64),
                ("max", ctypes.c_int64), ("mean", ctypes.c_double), ("hist", ctypes.c_int64 * 16)]


def _candidates():
    if os.environ.get("SPA_LIBRARY"):
        yield os.environ["SPA_LIBRARY"]
    if os.environ.get("SPA_PREFIX"):
        for lib in ("lib", "lib64"):
            yield os.path.join(os.environ["SPA_PREFIX"], lib, "libspa.so")
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "..", "..", "build", "libspa.so")  # the source tree
    found = ctypes.util.find_library("spa")
    if found:
        yield found


class _Lib:
    def __init__(self):
        tried = []
        self.dll = None
        for path in _candidates():
            tried.append(path)
            if os.path.sep in path and not os.path.exists(path):
                continue
            # RTLD_GLOBAL: Open MPI's plugins need libmpi's symbols
            self.dll = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            self.path = path
            break
        if self.dll is None:
            raise ImportError("spa: libspa.so not found (tried %s); set SPA_LIBRARY or SPA_PREFIX"
                              % ", ".join(tried))
        d = self.dll
        P, I, I64, V = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, None
        # Open MPI's MPI_Comm is a pointer; MPICH's an int
        try:
            self.comm_self = ctypes.addressof(ctypes.c_char.in_dll(d, "ompi_mpi_comm_self"))
            self.comm_type = ctypes.c_void_p
        except ValueError:
            self.comm_self = 0x44000001  # MPICH's MPI_COMM_SELF
            self.comm_type = ctypes.c_int
        C = self.comm_type
        for name, res, args in (
                ("spa_version", ctypes.c_char_p, []),
                ("spa_last_error", ctypes.c_char_p, []),
                ("spa_config_sizeof", ctypes.c_size_t, []),
                ("spa_config_init", V, [P]),
                ("spa_config_set_globals", I, [P, ctypes.c_char_p]),
                ("spa_config_add_rule", I, [P, I, ctypes.c_char_p]),
                ("spa_config_validate", I, [P]),
                ("spa_config_free", V, [P]),
                ("spa_partition", V, [P, I, I] + [ctypes.POINTER(I64)] * 4),
                ("spa_ctx_create", I, [C, P, I, ctypes.POINTER(P)]),
                ("spa_ctx_shard", V, [P, ctypes.POINTER(I64), ctypes.POINTER(I64)]),
                ("spa_ctx_set_exact", V, [P, I]),
                ("spa_ctx_run", I, [P] * 7),
                ("spa_ctx_backward", I, [P] * 11),
                ("spa_ctx_destroy", V, [ctypes.POINTER(P)]),
                ("spa_layer_run", I, [P] * 7),
                ("spa_plan_key_counts", I, [P, P]),
                ("spa_plan_ranks_bytes", I, [P, I, P]),
                ("spa_plan_mask_side", I64, [I64, I64, ctypes.POINTER(I64)]),
                ("spa_plan_block_mask", I, [P, ctypes.c_int32, I64, I64, P]),
                ("spa_plan_block_hops", I, [P, ctypes.c_int32, I64, P]),
                ("spa_agree", I, [C, I]),
                ("MPI_Initialized", I, [ctypes.POINTER(I)]),
                ("MPI_Finalized", I, [ctypes.POINTER(I)]),
                ("MPI_Init_thread", I, [P, P, I, ctypes.POINTER(I)]),
                ("MPI_Finalize", I, []),
                ("MPI_Comm_size", I, [C, ctypes.POINTER(I)]),
                ("MPI_Comm_rank", I, [C, ctypes.POINTER(I)])):
            f = getattr(d, name)
            f.restype, f.argtypes = res, args
        # spa_set_error is variadic: fixed argument types only
        d.spa_set_error.restype = I
        self.cfg_size = d.spa_config_sizeof()

    def init_mpi(self):
        flag = ctypes.c_int(0)
        self.dll.MPI_Initialized(ctypes.byref(flag))
        if flag.value:
            return
        provided = ctypes.c_int(0)
        # MPI_THREAD_FUNNELED: 1 in Open MPI and MPICH alike
        if self.dll.MPI_Init_thread(None, None, 1, ctypes.byref(provided)) != 0:
            raise SpaError("spa: MPI_Init_thread failed")
        atexit.register(self._finalize)

    def _finalize(self):
        flag = ctypes.c_int(0)
        self.dll.MPI_Finalized(ctypes.byref(flag))
        if not flag.value:
            self.dll.MPI_Finalize()


_lib = None


def _L():
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def version():
    """The version of the libspa in use, e.g. '0.1.0'."""
    return _L().dll.spa_version().decode()


def _raise(code):
    msg = _L().dll.spa_last_error().decode(errors="replace")
    if code in (_USAGE, _INPUT):
        raise ValueError("spa: " + msg)
    raise SpaError("spa: " + msg)


def _comm(comm):
    """(C handle, size, rank, mpi4py comm or None)."""
    L = _L()
    if comm is None:
        L.init_mpi()
        return L.comm_type(L.comm_self), 1, 0, None
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover
        raise ValueError("spa: comm= needs mpi4py (%s)" % e)
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        raise ValueError("spa: comm must be an mpi4py communicator")
    return L.comm_type(MPI._handleof(comm)), comm.Get_size(), comm.Get_rank(), comm


class _Config:
    """A heap spa_config with the pattern of the keyword arguments."""

    def __init__(self, n, heads, dim, block, local_blocks, radius, globals, random, seed, causal,
                 scale, stride, summary, dilated, fetch_mib=None):
        L = _L()
        self.buf = ctypes.create_string_buffer(L.cfg_size + 16)
        self.ptr = ctypes.cast(self.buf, ctypes.c_void_p)
        L.dll.spa_config_init(self.ptr)
        h = ctypes.cast(self.buf, ctypes.POINTER(_ConfigHead)).contents
        h.n, h.heads, h.dim = int(n), int(heads), int(dim)
        h.block = _int("block", block)
        h.seed = _int("seed", seed, lo=0)
        h.causal = 1 if causal else 0
        if scale is not None:
            if not float(scale) > 0 or not np.isfinite(scale):
                raise ValueError("spa: scale must be a finite number > 0 (got %r)" % (scale,))
            h.scale = float(scale)
        if fetch_mib is not None:
            try:
                fb = float(fetch_mib) * 2**20
            except (TypeError, ValueError):
                fb = -1.0
            if not fb >= 0 or not np.isfinite(fb):
                raise ValueError("spa: fetch_mib must be a number >= 0 (got %r)" % (fetch_mib,))
            h.fetch_bytes = int(fb)
        if globals is not None:
            if not isinstance(globals, str):
                globals = ",".join(str(_int("globals", g, lo=-2**62)) for g in globals) or "none"
            self._check(L.dll.spa_config_set_globals(self.ptr, globals.encode()))
        rules = {"random": random, "stride": stride, "summary": summary, "dilated": dilated}
        if radius is not None:
            rules["radius"] = radius
            if local_blocks != 3:  # given explicitly beside radius: per-head, or validate says no
                rules["local_blocks"] = local_blocks
        else:
            rules["local_blocks"] = local_blocks
        for name, val in rules.items():
            if val is None:
                continue
            for one in (val if isinstance(val, (list, tuple)) else [val]):
                self._check(L.dll.spa_config_add_rule(self.ptr, _RULES[name], str(one).encode()))
        self._check(L.dll.spa_config_validate(self.ptr))

    def _check(self, code):
        if code:
            self.free()
            _raise(code)

    def free(self):
        if self.buf is not None:
            _L().dll.spa_config_free(self.ptr)
            self.buf = None


def _int(name, v, lo=1):
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise ValueError("spa: %s must be an integer (got %r)" % (name, v))
    if iv != v or iv < lo:
        raise ValueError("spa: %s must be an integer >= %d (got %r)" % (name, lo, v))
    return iv


def _f32(name, a, ndim):
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ValueError("spa: %s must be a numeric array (got dtype %s)" % (name, a.dtype))
    if a.ndim not in ndim:
        raise ValueError("spa: %s must have %s dimensions (got shape %s)"
                         % (name, " or ".join(map(str, ndim)), a.shape))
    return np.ascontiguousarray(a, dtype=np.float32)


def _ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p) if a is not None else None


def _global_rows(rows, mcomm):
    return rows if mcomm is None else mcomm.allreduce(rows)


def shard(n, *, block=64, comm=None):
    """This rank's rows [t0, t1) of a sequence of n tokens (block-aligned
    shards whose sizes differ by at most one block)."""
    c, size, rank, _ = _comm(comm)
    cfg = _Config(n, 1, 1, block, 3, None, "none", 0, 0, False, None, None, None, None)
    v = [ctypes.c_int64() for _ in range(4)]
    _L().dll.spa_partition(cfg.ptr, size, rank, *[ctypes.byref(x) for x in v])
    cfg.free()
    return v[2].value, v[3].value


def plan(n, *, heads=1, dim=64, ranks=None, hops=False, mask=False, head=0, keys=True, block=64,
         local_blocks=3, radius=None, globals=None, random=3, seed=0, causal=False, scale=None,
         stride=None, summary=None, dilated=None, fetch_mib=None):
    """What a pattern costs before anything runs: the figures of
    `spa plan --json`, as a dict. Pure: no MPI, no data; block by block, so
    n = 10M takes seconds. Pattern keywords (and fetch_mib, which sets the
    batches) as in spa.attention.

    Always: n, heads, dim, block, blocks. With keys (the default):
    keys_min, keys_mean, keys_max (|S(i)| over every token and head),
    pairs, density (of dense, or of causal dense), flops (4 dim pairs);
    keys=False leaves them out, which saves most of the time of a call
    that asks for the bytes per rank alone (7 s of 8 at n = 2^24, H = 4).
    ranks=P: per_rank, a list of P dicts (rank, block_begin, block_end,
    bytes_halo, bytes_global, bytes_rma: the bytes of K and V it receives per
    run; fetched_blocks, batches), and bytes_halo, bytes_global, bytes_rma
    (the largest rank's) and their *_total over the ranks.
    hops=True (or a number of source blocks): hops of head `head` on its
    directed block graph, as `spa plan --stats`: sources (all blocks up to
    1024, else 256 evenly spaced), sampled, pairs, reachable, max, mean,
    histogram (16 counts, the last 15 hops or more).
    mask=True (or the largest side in pixels; True = 1024): mask, a uint8
    [side, side] array of head `head`'s block mask, each pixel the OR of the
    PIX_* kinds of the blocks in it (0: none), and blocks_per_pixel.
    """
    L = _L().dll
    cfg = _Config(n, heads, dim, block, local_blocks, radius, globals, random, seed, causal, scale,
                  stride, summary, dilated, fetch_mib)
    try:
        h = ctypes.cast(cfg.buf, ctypes.POINTER(_ConfigHead)).contents
        nb = -(-h.n // h.block)
        r = {"n": h.n, "heads": h.heads, "dim": h.dim, "block": h.block, "blocks": nb}
        if keys:
            kc = _PlanKeys()
            cfg._check(L.spa_plan_key_counts(cfg.ptr, ctypes.byref(kc)))
            dense = h.n * (h.n + 1) / 2 if h.causal else float(h.n) * h.n
            r.update({"keys_min": kc.min, "keys_mean": kc.pairs / (h.n * h.heads), "keys_max": kc.max,
                      "pairs": kc.pairs, "density": kc.pairs / (dense * h.heads),
                      "flops": 4.0 * h.dim * kc.pairs})
        if ranks is not None:
            P = _int("ranks", ranks)
            xs = (_PlanRank * P)()
            cfg._check(L.spa_plan_ranks_bytes(cfg.ptr, P, xs))
            per = [dict({"rank": rank}, **{f: getattr(x, f) for f, _ in _PlanRank._fields_})
                   for rank, x in enumerate(xs)]
            r["ranks"], r["per_rank"] = P, per
            for f in ("bytes_halo", "bytes_global", "bytes_rma"):
                r[f] = max(x[f] for x in per)
                r[f + "_total"] = sum(x[f] for x in per)
        if hops is not False and hops is not None:
            sources = (nb if nb <= 1024 else 256) if hops is True else _int("hops", hops)
            x = _PlanHops()
            cfg._check(L.spa_plan_block_hops(cfg.ptr, _int("head", head, lo=-2**31), sources,
                                             ctypes.byref(x)))
            r["hops"] = {"sources": x.sources, "sampled": x.sources < nb, "pairs": x.pairs,
                         "reachable": x.reachable, "max": x.max, "mean": x.mean,
                         "histogram": list(x.hist)}
        if mask is not False and mask is not None:
            f = ctypes.c_int64()
            side = L.spa_plan_mask_side(nb, 1024 if mask is True else _int("mask", mask), ctypes.byref(f))
            pix = np.zeros((side, side), np.uint8)
            cfg._check(L.spa_plan_block_mask(cfg.ptr, _int("head", head, lo=-2**31), f.value, side,
                                             _ptr(pix)))
            r["mask"], r["blocks_per_pixel"] = pix, f.value
        return r
    finally:
        cfg.free()


def _run_ctx(c, mcomm, cfg, rows, threads, body):
    """Creates the context, checks this rank's rows against its shard on
    every rank together, then calls body(ctx) (collective)."""
    L = _L().dll
    ctx = ctypes.c_void_p()
    try:
        code = L.spa_agree(c, L.spa_ctx_create(c, cfg.ptr, int(threads or 0), ctypes.byref(ctx)))
        if code:
            _raise(code)
        t0, t1 = ctypes.c_int64(), ctypes.c_int64()
        L.spa_ctx_shard(ctx, ctypes.byref(t0), ctypes.byref(t1))
        local = 0
        if t1.value - t0.value != rows:
            local = L.spa_set_error(_USAGE, b"spa/__init__.py", 0, b"%s", (
                "this rank (of %d) passed %d rows, but its shard is rows [%d, %d) of n = %d: "
                "pass the rows of spa.shard(n, comm=comm)" % (
                    mcomm.Get_size() if mcomm else 1, rows, t0.value, t1.value,
                    ctypes.cast(cfg.buf, ctypes.POINTER(_ConfigHead)).contents.n)).encode())
        code = L.spa_agree(c, local)
        if code:
            _raise(code)
        code = body(ctx)
        if code:
            _raise(code)
    finally:
        if ctx.value:
            L.spa_ctx_destroy(ctypes.byref(ctx))
        cfg.free()


def _same_everywhere(mcomm, what, value):
    """ValueError on every rank when ranks disagree on value (no hang)."""
    if mcomm is None:
        return
    vals = mcomm.allgather(value)
    if any(v != vals[0] for v in vals):
        raise ValueError("spa: ranks disagree on %s: %s" % (what, vals))


def _attention_arrays(mcomm, names, arrays, lse=None):
    """Checks the arrays of one attention call on every rank together.

    arrays (named by names, q first) must be numeric, of one shape, [H, n, D]
    or [n, D]; lse, when given, q's shape without the last dimension. Returns
    (arrays as contiguous float32 [H, rows, D], lse as float32 [H, rows] or
    None, squeeze: whether they came as [n, D], n: the rows of every rank).
    An error on any rank raises ValueError on every rank."""
    local_err = None
    try:
        arrays = [_f32(nm, a, (2, 3)) for nm, a in zip(names, arrays)]
        if lse is not None:
            lse = _f32("lse", lse, (1, 2))
    except ValueError as e:
        local_err = str(e)
    shape = arrays[0].shape if local_err is None else None
    if local_err is None and any(a.shape != shape for a in arrays):
        local_err = "spa: %s and %s must have one shape (got %s)" % (
            ", ".join(names[:-1]), names[-1], ", ".join(str(a.shape) for a in arrays))
    if local_err is None and lse is not None and lse.shape != shape[:-1]:
        local_err = "spa: lse must have shape %s, %s's without the last dimension (got %s)" % (
            shape[:-1], names[0], lse.shape)
    squeeze = local_err is None and len(shape) == 2
    if squeeze:
        arrays = [a[None] for a in arrays]
        lse = None if lse is None else lse[None]
    if local_err is None and (arrays[0].shape[0] < 1 or arrays[0].shape[2] < 1):
        local_err = "spa: %s has an empty head or feature dimension (shape %s)" % (names[0], shape)
    _same_everywhere(mcomm, "the argument check", local_err)
    if local_err:
        raise ValueError(local_err)
    H, rows, D = arrays[0].shape
    _same_everywhere(mcomm, "heads and dim", (H, D))
    n = _global_rows(rows, mcomm)
    if n < 1:
        raise ValueError("spa: the sequence is empty")
    return arrays, lse, squeeze, n


def attention(q, k, v, *, block=64, local_blocks=3, radius=None, globals=None, random=3, seed=0,
              causal=False, scale=None, stride=None, summary=None, dilated=None, fetch_mib=None,
              threads=None, exact=False, comm=None):
    """Sparse attention of q, k, v ([H, n, D] or [n, D], float32) -> (out, lse).

    out has q's shape and lse its shape without the last dimension. The
    pattern keywords are spa's flags (README): local_blocks (odd, or 0),
    radius, globals (None = the first and last block, "none", a spec string
    "0,250,7:12" or a list of indices), random, seed, causal, scale (None =
    1/sqrt(D)), stride, summary ("L:C"), dilated ("w:r,..."). A rule value
    may be a string with a head range ("3@0:4") or a list of them.
    fetch_mib: memory for fetched remote blocks per rank, in MiB (--fetch-mib;
    a fraction is allowed; 0 = no limit; None = the default, 512): the
    fetches go in batches that fit it, and the results do not change.
    exact: global rows summed in fixed point (spa_ctx_set_exact), so that
    out and lse do not depend on the number of ranks at all.
    With comm (mpi4py), q, k, v are this rank's rows, spa.shard(n, comm=comm).
    """
    c, size, rank, mcomm = _comm(comm)
    (q, k, v), _, squeeze, n = _attention_arrays(mcomm, ("q", "k", "v"), (q, k, v))
    H, rows, D = q.shape
    cfg = _Config(n, H, D, block, local_blocks, radius, globals, random, seed, causal, scale, stride,
                  summary, dilated, fetch_mib)
    out = np.zeros_like(q)
    lse = np.zeros((H, rows), np.float32)
    _run_ctx(c, mcomm, cfg, rows, threads,
             lambda ctx: _L().dll.spa_ctx_set_exact(ctx, int(bool(exact))) or
             _L().dll.spa_ctx_run(ctx, _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), None))
    return (out[0], lse[0]) if squeeze else (out, lse)


def attention_backward(q, k, v, out, lse, dout, *, block=64, local_blocks=3, radius=None,
                       globals=None, random=3, seed=0, causal=False, scale=None, stride=None,
                       summary=None, dilated=None, fetch_mib=None, threads=None, exact=False, comm=None):
    """Gradients of spa.attention -> (dq, dk, dv), float32 arrays of q's shape.

    For a loss L with dL/dout = dout: q, k, v as given to spa.attention, out
    and lse what it returned for them, dout of q's shape, and the same
    pattern keywords. With comm (mpi4py), every array is this rank's rows
    [t0, t1) = spa.shard(n, comm=comm), as in the forward, and so are the
    results: dk and dv of this rank's keys hold the contributions of every
    rank's queries (libspa sends the gradients of borrowed keys back to
    their owners). Collective: every rank calls it. exact: every key's dk,
    dv summed in fixed point (spa_ctx_set_exact), bit-identical for any
    number of ranks given the same out and lse (spa.attention(...,
    exact=True) gives those).
    """
    c, size, rank, mcomm = _comm(comm)
    (q, k, v, out, dout), lse, squeeze, n = _attention_arrays(
        mcomm, ("q", "k", "v", "out", "dout"), (q, k, v, out, dout), lse)
    H, rows, D = q.shape
    cfg = _Config(n, H, D, block, local_blocks, radius, globals, random, seed, causal, scale, stride,
                  summary, dilated, fetch_mib)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(q), np.zeros_like(q)
    _run_ctx(c, mcomm, cfg, rows, threads,
             lambda ctx: _L().dll.spa_ctx_set_exact(ctx, int(bool(exact))) or _L().dll.spa_ctx_backward(ctx, _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse),
                                                   _ptr(dout), _ptr(dq), _ptr(dk), _ptr(dv), None))
    return (dq[0], dk[0], dv[0]) if squeeze else (dq, dk, dv)


def attention_torch(q, k, v, **pattern):
    """spa.attention on CPU float32 torch tensors, differentiable: returns
    out (q's shape), whose backward pass is spa.attention_backward. Keywords
    as in spa.attention. Needs PyTorch (imported on first call); the
    autograd.Function is spa.torch.SpaAttention."""
    from .torch import SpaAttention
    return SpaAttention.apply(q, k, v, pattern)


def layer(x, wq, wk, wv, wo, bq=None, bk=None, bv=None, bo=None, *, heads, block=64,
          local_blocks=3, radius=None, globals=None, random=3, seed=0, causal=False, scale=None,
          stride=None, summary=None, dilated=None, fetch_mib=None, threads=None, comm=None,
          return_attention=False):
    """Multi-head attention layer, PyTorch nn.Linear convention (y = x W^T + b).

    x: [n, d_model] (this rank's rows with comm); wq, wk, wv: [H*D, d_model];
    wo: [d_model, H*D]; bq, bk, bv: [H*D]; bo: [d_model] (optional). Returns
    y [n, d_model], or (y, out [H, n, D], lse [H, n]) with return_attention.
    Pattern keywords as in spa.attention.
    """
    c, size, rank, mcomm = _comm(comm)
    heads = _int("heads", heads)
    x = _f32("x", x, (2,))
    w = {nm: _f32(nm, a, (2,)) for nm, a in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo))}
    b = {nm: (None if a is None else _f32(nm, a, (1,)))
         for nm, a in (("bq", bq), ("bk", bk), ("bv", bv), ("bo", bo))}
    rows, dm = x.shape
    hd = w["wq"].shape[0]
    want = {"wq": (hd, dm), "wk": (hd, dm), "wv": (hd, dm), "wo": (dm, hd),
            "bq": (hd,), "bk": (hd,), "bv": (hd,), "bo": (dm,)}
    local_err = None
    for nm, a in list(w.items()) + list(b.items()):
        if a is not None and a.shape != want[nm] and local_err is None:
            local_err = "%s has shape %s; expected %s (x is [n, %d], wq [%d, %d])" % (
                nm, a.shape, want[nm], dm, hd, w["wq"].shape[1])
    if local_err is None and (hd % heads or dm < 1 or hd < 1):
        local_err = "wq has %d rows, not a positive multiple of heads = %d" % (hd, heads)
    _same_everywhere(mcomm, "the argument check", local_err)
    if local_err:
        raise ValueError("spa: " + local_err)
    D = hd // heads
    n = _global_rows(rows, mcomm)
    if n < 1:
        raise ValueError("spa: the sequence is empty")
    cfg = _Config(n, heads, D, block, local_blocks, radius, globals, random, seed, causal, scale,
                  stride, summary, dilated, fetch_mib)
    y = np.zeros((rows, dm), np.float32)
    out = np.zeros((heads, rows, D), np.float32) if return_attention else None
    lse = np.zeros((heads, rows), np.float32) if return_attention else None
    ws = _Weights(dm, *[_ptr(w[k]) for k in ("wq", "wk", "wv", "wo")],
                  *[_ptr(b[k]) for k in ("bq", "bk", "bv", "bo")])
    _run_ctx(c, mcomm, cfg, rows, threads,
             lambda ctx: _L().dll.spa_layer_run(ctx, ctypes.byref(ws), _ptr(x), _ptr(y), _ptr(out),
                                                _ptr(lse), None))
    return (y, out, lse) if return_attention else y
