"""pytest for the gradients: spa.attention_backward against dense float64
numpy gradients on the mask of the same pattern, its error cases, and the
torch.autograd.Function against PyTorch autograd through dense masked
attention (skipped without torch). The 3-rank check is mpi_check.py's
(test_spa.py::test_mpi).

The mask comes from libspa's spa_pattern_attends: S(i) token by token from
the SPEC's rules, the mask of the C reference (include/spa.h), not the
kernels' block lists.
"""
import ctypes
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import spa

HERE = os.path.dirname(os.path.abspath(__file__))

# spa.attention's pattern keywords and their defaults
PATTERN_DEFAULTS = {name: p.default for name, p in inspect.signature(spa.attention).parameters.items()
                    if p.kind == p.KEYWORD_ONLY and name not in ("threads", "comm")}


def pattern_mask(H, n, D, **kw):
    """[H, n, n] bool: key j in S(i) of head h, for spa.attention's keywords kw."""
    p = dict(PATTERN_DEFAULTS, **kw)
    cfg = spa._Config(n, H, D, p["block"], p["local_blocks"], p["radius"], p["globals"], p["random"],
                      p["seed"], p["causal"], p["scale"], p["stride"], p["summary"], p["dilated"])
    attends = spa._L().dll.spa_pattern_attends
    attends.restype = ctypes.c_int
    attends.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64]
    try:
        return np.array([[[attends(cfg.ptr, h, i, j) for j in range(n)] for i in range(n)]
                         for h in range(H)], bool)
    finally:
        cfg.free()


def dense_grad(q, k, v, dout, mask, scale):
    """Dense masked attention's gradients in float64, [H, n, D] each:
    P_ij = exp(s q_i.k_j - lse_i) on the mask; Dl_i = dout_i.out_i;
    dv_j = sum_i P_ij dout_i; dS_ij = P_ij (dout_i.v_j - Dl_i);
    dq_i = s sum_j dS_ij k_j; dk_j = s sum_i dS_ij q_i (README, Gradients)."""
    q, k, v, dout = (a.astype(np.float64) for a in (q, k, v, dout))
    s = np.where(mask, scale * np.einsum("hid,hjd->hij", q, k), -np.inf)
    m = s.max(axis=2, keepdims=True)
    p = np.exp(s - m)
    p /= p.sum(axis=2, keepdims=True)
    out = np.einsum("hij,hjd->hid", p, v)
    dl = (dout * out).sum(axis=2)
    dv = np.einsum("hij,hid->hjd", p, dout)
    ds = p * (np.einsum("hid,hjd->hij", dout, v) - dl[..., None])
    return (scale * np.einsum("hij,hjd->hid", ds, k), scale * np.einsum("hij,hid->hjd", ds, q), dv)


def arrays(H=2, n=300, D=16, seed=0, count=4):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((H, n, D)).astype("f4") for _ in range(count)]


def assert_close(name, got, want, rel):
    """max |got - want| <= rel * max |want|."""
    diff, top = float(np.abs(got - want).max()), float(np.abs(want).max())
    print("%s: max |difference| %.3g, largest |reference| %.3g" % (name, diff, top))
    assert got.shape == want.shape and diff <= rel * top, (name, diff, top)


GRAD_PATTERNS = [
    ("blocks_globals", dict(block=16, random=2, globals=[0, 150, 151], seed=3)),
    ("radius_causal", dict(block=16, radius=20, globals=[5, 150], random=1, causal=True, seed=2)),
    ("per_head", dict(block=16, local_blocks="3@0:1", stride="7@1:2", random=2, globals="none",
                      summary="32:4")),
    ("dilated_scale", dict(block=16, local_blocks=1, dilated="64:4", random=1, scale=0.3)),
]


@pytest.mark.parametrize("name,kw", GRAD_PATTERNS, ids=[p[0] for p in GRAD_PATTERNS])
def test_backward_equals_dense(name, kw):
    H, n, D = 2, 300, 16
    q, k, v, dout = arrays(H, n, D)
    out, lse = spa.attention(q, k, v, **kw)
    got = spa.attention_backward(q, k, v, out, lse, dout, **kw)
    mask = pattern_mask(H, n, D, **kw)
    assert 0 < mask.mean() < 0.5  # a sparse pattern
    want = dense_grad(q, k, v, dout, mask, kw.get("scale") or 1 / np.sqrt(D))
    for gname, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == np.float32
        assert_close(gname, g, w, 1e-4)


def test_backward_2d_threads_and_conversions():
    q, k, v, dout = (a[0] for a in arrays(H=1))
    kw = dict(block=16, random=2)
    out, lse = spa.attention(q, k, v, **kw)
    one = spa.attention_backward(q, k, v, out, lse, dout, threads=1, **kw)
    assert all(g.shape == q.shape for g in one)
    # [n, D] is one head of [1, n, D]
    three = spa.attention_backward(q[None], k[None], v[None], out[None], lse[None], dout[None], **kw)
    for a, b in zip(one, three):
        assert np.array_equal(a, b[0])
    # float64 and non-contiguous arrays are converted (copied), with the same result
    dout_strided = np.repeat(dout, 2, axis=1)[:, ::2]
    assert not dout_strided.flags.c_contiguous
    again = spa.attention_backward(q.astype(np.float64), np.asfortranarray(k), v, out, lse,
                                   dout_strided, threads=1, **kw)
    for a, b in zip(one, again):
        assert np.array_equal(a, b)


def test_backward_bad_arguments():
    q, k, v, dout = arrays(n=100)
    out, lse = spa.attention(q, k, v)
    cases = [
        (dict(dout=dout[:, :50]), "one shape"),
        (dict(dout=dout[0]), "one shape"),
        (dict(out=out[:, :, :8]), "one shape"),
        (dict(k=k[:1]), "one shape"),
        (dict(lse=lse[:, :99]), "lse must have shape"),
        (dict(lse=lse.T), "lse must have shape"),
        (dict(lse=out), "lse must have 1 or 2 dimensions"),
        (dict(lse=lse[0, 0]), "dimensions"),
        (dict(dout=dout.astype(str)), "numeric"),
        (dict(dout=dout.astype(np.complex64)), "numeric"),
        (dict(q=q[:, :, :0], k=k[:, :, :0], v=v[:, :, :0], out=out[:, :, :0], dout=dout[:, :, :0]),
         "empty"),
        (dict(q=q[:, :0], k=k[:, :0], v=v[:, :0], out=out[:, :0], lse=lse[:, :0], dout=dout[:, :0]),
         "empty"),
    ]
    base = dict(q=q, k=k, v=v, out=out, lse=lse, dout=dout)
    for change, words in cases:
        a = dict(base, **change)
        with pytest.raises(ValueError, match="spa: .*" + words):
            spa.attention_backward(a["q"], a["k"], a["v"], a["out"], a["lse"], a["dout"])
    with pytest.raises(ValueError, match=r"spa: .*\-\-local\-blocks"):
        spa.attention_backward(q, k, v, out, lse, dout, local_blocks=2)
    with pytest.raises(ValueError, match="spa: .*global"):
        spa.attention_backward(q, k, v, out, lse, dout, globals=[100])
    # the interpreter is still fine after every error
    dq, dk, dv = spa.attention_backward(q, k, v, out, lse, dout)
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()


def test_import_spa_does_not_import_torch():
    code = "import sys, spa; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(HERE, ".."),
                                                       os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def torch_dense(torch, q, k, v, mask, scale):
    """Dense masked attention in torch (float64), differentiable by autograd."""
    s = (scale * q @ k.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("kw", [dict(block=8, random=1, globals=[0, 40], seed=1),
                                dict(block=8, radius=5, causal=True, stride=9, globals="none")],
                         ids=["globals", "radius_causal_stride"])
def test_torch_function_equals_autograd(kw):
    torch = pytest.importorskip("torch")
    from spa.torch import SpaAttention

    H, n, D = 2, 64, 8
    q, k, v, w = arrays(H, n, D, seed=7)
    mask = torch.from_numpy(pattern_mask(H, n, D, **kw))
    ours = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    ref = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v)]
    weight = torch.from_numpy(w)  # loss = sum(out * weight): dout = weight
    out = spa.attention_torch(*ours, **kw)
    assert out.dtype == torch.float32 and out.shape == (H, n, D) and out.requires_grad
    (out * weight).sum().backward()
    ref_out = torch_dense(torch, *ref, mask, 1 / np.sqrt(D))
    (ref_out * weight.double()).sum().backward()
    assert_close("out", out.detach().numpy(), ref_out.detach().numpy(), 1e-5)
    for name, a, b in zip(("dq", "dk", "dv"), ours, ref):
        assert_close(name, a.grad.numpy(), b.grad.numpy(), 1e-4)
    # the Function's class, called directly, is the same function
    again = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    SpaAttention.apply(*again, kw).sum().backward()
    assert again[0].grad is not None and again[0].grad.dtype == torch.float32


def test_torch_bad_tensors():
    torch = pytest.importorskip("torch")
    q, k, v = (torch.tensor(a) for a in arrays(n=64, count=3))
    with pytest.raises(ValueError, match="spa: q must be a CPU float32 tensor"):
        spa.attention_torch(q.double(), k, v)
    with pytest.raises(ValueError, match="spa: v must be a torch.Tensor"):
        spa.attention_torch(q, k, v.numpy())
    with pytest.raises(ValueError, match="spa: .*one shape"):
        spa.attention_torch(q, k[:, :32], v)
    # non-contiguous tensors are copied
    qt = q.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    assert not qt.is_contiguous()
    spa.attention_torch(qt, k, v).sum().backward()
    assert torch.isfinite(qt.grad).all()
