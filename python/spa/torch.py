"""spa attention as a torch.autograd.Function, on CPU float32 tensors.

    out = spa.attention_torch(q, k, v, block=64, random=3)   # q, k, v: [H, n, D] or [n, D]
    out.sum().backward()                                     # q.grad, k.grad, v.grad

The forward pass is spa.attention, the backward pass spa.attention_backward,
with the same pattern keywords (threads and comm included). Under mpirun,
q, k, v are this rank's rows, and every rank must run the backward pass
(it is collective). Importing this module imports torch; `import spa` does
not.
"""
import torch

from . import attention, attention_backward


def _numpy(name, t):
    """A CPU float32 tensor's values as a numpy array (no copy)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError("spa: %s must be a torch.Tensor (got %s)" % (name, type(t).__name__))
    if t.device.type != "cpu" or t.dtype != torch.float32:
        raise ValueError("spa: %s must be a CPU float32 tensor (got %s on %s)"
                         % (name, t.dtype, t.device))
    return t.detach().numpy()


class SpaAttention(torch.autograd.Function):
    """SpaAttention.apply(q, k, v, pattern) -> out; pattern is a dict of
    spa.attention's keywords. spa.attention_torch(q, k, v, **pattern) is
    the same call. Differentiable once (no gradient of the gradients)."""

    @staticmethod
    def forward(ctx, q, k, v, pattern):
        qn, kn, vn = (_numpy(nm, t) for nm, t in (("q", q), ("k", k), ("v", v)))
        out, lse = attention(qn, kn, vn, **pattern)
        out = torch.from_numpy(out)
        ctx.pattern = pattern
        ctx.lse = lse
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out = ctx.saved_tensors
        grads = attention_backward(*(t.detach().numpy() for t in (q, k, v, out)), ctx.lse,
                                   _numpy("dout", dout), **ctx.pattern)
        return tuple(torch.from_numpy(g) for g in grads) + (None,)
