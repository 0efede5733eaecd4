r"""Distill a low-rank layer from a trained dense layer: :func:`fit` (docs/design.md section 2, lowrank).

What is fitted. The dense layer's kernel on the sample inputs, per head h, over the support
S(i) (all keys, minus padded ones, j <= i when causal):

- ``normalize="none"``: the logits K_h(i, j) = l_h(i, j), approximated by phi_i . psi_j;
- ``normalize="softmax"``: the row-normalized weights A_h(i, j) = exp(l) / sum_{S(i)} exp(l),
  approximated by (phi_i . psi_j) / sum_{S(i)} phi_i . psi_j'. Rows are compared after
  normalization (not exp(l) itself, nor in log space) because a softmax-mode kernel is only
  defined up to a factor per query row, which the normalization removes: the normalized row
  is exactly what reaches the output.

Loss: the relative squared error sum (approx - target)^2 / sum target^2 over sampled pairs:
each step draws ``rows_per_step`` query rows (the same rows in every sample of the batch)
and takes them against every key of their support (a softmax row needs its whole support
to be normalized). Minimized by Adam (cosine-decayed learning rate) over the feature maps'
parameters only; the value / output projections (and the q/k / pair-MLP parameters, kept
but unused by the low-rank forward) are copied from the dense layer and not trained.

Nystrom-style init (``landmarks``): landmark indices L (rank of them; index r names query r
and key r of the samples, i.e. self-attention-like inputs) give targets for the raw feature
maps before the least-squares phase (whose result is kept only if its training kernel
error is below the init's). The landmark points are query / key L_r of the first
training sample; the targets are fitted in closed form (linear least squares on [f; p]) into
each map's linear skip path and output bias, with the hidden path starting at zero:

- ``none``: the CUR / Nystrom factors of the logits, phi_i -> l(i, L) U^+ and psi_j -> l(L, j)
  with U = l(L, L), so phi . psi = l(:, L) U^+ l(L, :) (exact when rank l <= rank);
- ``softmax``: the positive analogue without U^+: raw phi_i -> l(i, L), raw psi_j -> l(L, j),
  i.e. phi . psi = sum_r exp(l(i, L_r)) exp(l(L_r, j)) (a kernel routed through landmarks).

The dense logits of the samples are materialized (B, H, N, M): a fitting utility for
moderate sizes, evaluated in the layer's parameter dtype.
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Optional

import torch
from torch import Tensor

from .._common.layer_inputs import batch_first_inputs, key_masks
from .._common.naive import _activation, _mlp_logits
from .evaluator import features as _features

__all__ = ["fit", "LowRankFitReport"]


@dataclass
class LowRankFitReport:
    """What :func:`fit` measured.

    kernel_rel_error: ||approx - target||_F / ||target||_F of the kernel (logits for
        ``none``, row-normalized weights for ``softmax``) over every supported pair of the
        evaluation inputs (held-out ones when ``holdout`` > 0, else the training inputs).
    output_rel_error: ||y_lowrank - y_dense||_F / ||y_dense||_F of the layers' outputs on the
        same inputs.
    train_kernel_rel_error: the same kernel error on the training inputs.
    final_loss: the last least-squares step's loss (relative squared error, sampled rows);
        when ``kept_init`` (the steps did not improve the Nystrom init's training kernel error,
        so the init was restored), the init's loss on every training row.
    """

    rank: int
    normalize: str
    steps: int
    nystrom_init: bool
    kept_init: bool
    final_loss: float
    kernel_rel_error: float
    output_rel_error: float
    train_kernel_rel_error: float
    n_train: int
    n_eval: int
    evaluated_on: str  # "holdout" or "train"

    def __str__(self) -> str:
        init = " (after a Nystrom init)" if self.nystrom_init else ""
        if self.kept_init:
            init += "; the steps did not improve on the init, which is kept"
        return (
            f"low-rank fit: rank {self.rank}, normalize={self.normalize!r}, "
            f"{self.steps} steps{init}\n"
            f"  final loss (rel. squared kernel error, sampled rows): {self.final_loss:.4g}\n"
            f"  kernel rel. error: {self.kernel_rel_error:.4g} on {self.evaluated_on} "
            f"({self.n_eval} samples); {self.train_kernel_rel_error:.4g} on train "
            f"({self.n_train} samples)\n"
            f"  output rel. error: {self.output_rel_error:.4g} on {self.evaluated_on}")


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
class _Progress:
    """tqdm when installed, else a line on stderr about every 10 % of the steps."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self.total, self.enabled, self.desc, self.n = total, enabled, desc, 0
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except Exception:  # tqdm missing or broken: text fallback
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc)
        self._every = max(1, total // 10)

    def update(self, loss: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        elif self.n % self._every == 0 or self.n == self.total:
            print(f"{self.desc}: step {self.n}/{self.total} loss {loss:.4g}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------------------------
# the dense kernel
# --------------------------------------------------------------------------------------------
def _dense_logits(layer, q_in: Tensor, k_in: Tensor, p_q: Tensor, p_k: Tensor) -> Tensor:
    """l_h(i, j) (B, H, N, M) of the dense layer (content term + pair MLP), batch-first inputs."""
    B, N, _ = q_in.shape
    M = k_in.shape[1]
    l = q_in.new_zeros(B, layer.num_heads, N, M)
    if layer.content:
        q, k, _ = layer._in_projection(q_in, k_in, k_in.new_zeros(B, M, layer.vdim))
        l = l + torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(layer.head_dim)
    if layer.kernel_hidden > 0:
        u, t = layer._mlp_inputs(q_in, k_in, p_q, p_k)
        l = l + _mlp_logits(layer.kernel_hidden, _activation(layer.activation), layer.kernel_W2,
                            layer.kernel_b2, u_i=u[:, :, None, :], t_j=t[:, None, :, :])
    return l


def _support(N: int, M: int, causal: bool, padding: Optional[Tensor], B: int, device) -> Tensor:
    """(B, 1, N, M) bool support."""
    s = torch.ones(B, 1, N, M, dtype=torch.bool, device=device)
    if causal:
        s = s & torch.ones(N, M, dtype=torch.bool, device=device).tril()
    if padding is not None:
        s = s & ~padding[:, None, None, :]
    return s


def _target(l: Tensor, support: Tensor, softmax: bool) -> Tensor:
    if not softmax:
        return torch.where(support, l, torch.zeros((), dtype=l.dtype, device=l.device))
    z = l.masked_fill(~support, -math.inf)
    mx = z.amax(-1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros((), dtype=mx.dtype, device=mx.device))
    e = torch.exp(z - mx)
    den = e.sum(-1, keepdim=True)
    return e / torch.where(den > 0, den, torch.ones((), dtype=den.dtype, device=den.device))


def _approx(phi: Tensor, psi: Tensor, support: Tensor, softmax: bool) -> Tensor:
    k = torch.einsum("bhnf,bhmf->bhnm", phi, psi)
    k = torch.where(support, k, torch.zeros((), dtype=k.dtype, device=k.device))
    if not softmax:
        return k
    den = k.sum(-1, keepdim=True)
    return k / torch.where(den != 0, den, torch.ones((), dtype=den.dtype, device=den.device))


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
_INPUT_KEYS = ("query", "key", "value", "query_pos", "key_pos", "key_padding_mask")


def _as_kwargs(sample_inputs) -> dict:
    if isinstance(sample_inputs, Tensor):
        return {"query": sample_inputs}
    if isinstance(sample_inputs, (tuple, list)):
        if not 1 <= len(sample_inputs) <= 3 or not all(
                isinstance(x, Tensor) or x is None for x in sample_inputs):
            raise ValueError("sample_inputs: expected a tensor (self attention), a tuple "
                             "(query[, key[, value]]) of tensors, or a dict of forward arguments "
                             f"{_INPUT_KEYS}")
        return dict(zip(("query", "key", "value"), sample_inputs))
    if isinstance(sample_inputs, dict):
        bad = set(sample_inputs) - set(_INPUT_KEYS)
        if bad or "query" not in sample_inputs:
            raise ValueError(f"sample_inputs: a dict needs 'query' and may hold only "
                             f"{_INPUT_KEYS}, got keys {sorted(sample_inputs)}")
        return dict(sample_inputs)
    raise ValueError(f"sample_inputs: expected a tensor, a tuple or a dict, got "
                     f"{type(sample_inputs).__name__}")


def _split(kw: dict, layer, idx: Tensor) -> dict:
    """The samples ``idx`` of the batch (layer layout for query/key/value, batch-first for the
    rest; positions with batch 1 are shared)."""
    out = {}
    bdim = 0 if layer.batch_first else 1
    for name, x in kw.items():
        if x is None:
            out[name] = None
        elif name in ("query", "key", "value"):
            out[name] = x.index_select(bdim, idx.to(x.device))
        elif name in ("query_pos", "key_pos") and (x.dim() < 3 or x.shape[0] == 1):
            out[name] = x
        else:
            out[name] = x.index_select(0, idx.to(x.device))
    return out


def _prepare(layer, kw: dict):
    """Batch-first tensors, positions, padding and the dense logits of a set of inputs."""
    query = kw["query"]
    key = kw.get("key")
    self_attention = key is None or key is query
    key = query if key is None else key
    value = kw.get("value")
    value = key if value is None else value
    q_in, k_in, v_in, _ = batch_first_inputs(layer, query, key, value)
    B, N, _ = q_in.shape
    M = k_in.shape[1]
    padding, key_bias = key_masks(kw.get("key_padding_mask"), B, M, True, q_in.dtype)
    if key_bias is not None:
        raise ValueError("sample_inputs: key_padding_mask must be bool (or float 0 / -inf)")
    qp, kp = kw.get("query_pos"), kw.get("key_pos")
    p_q = layer._positions(qp, "query_pos", B, N, q_in)
    p_k = p_q if (kp is None and self_attention and qp is not None) else \
        layer._positions(kp, "key_pos", B, M, q_in)
    with torch.no_grad():
        l = _dense_logits(layer, q_in, k_in, p_q, p_k)
    support = _support(N, M, layer.causal, padding, B, q_in.device)
    return dict(q_in=q_in, k_in=k_in, p_q=p_q, p_k=p_k, padding=padding, logits=l,
                support=support)


def _kernel_rel_error(lr_layer, data: dict, softmax: bool) -> float:
    with torch.no_grad():
        phi, psi = _features(lr_layer, data["q_in"], data["k_in"], data["p_q"], data["p_k"],
                             data["padding"])
        tgt = _target(data["logits"], data["support"], softmax)
        app = _approx(phi, psi, data["support"], softmax)
        return float(torch.linalg.vector_norm(app - tgt) / torch.linalg.vector_norm(tgt))


def _forward(layer, kw: dict) -> Tensor:
    args = {k: v for k, v in kw.items() if k not in ("query", "key", "value")}
    return layer(kw["query"], kw.get("key"), kw.get("value"), **args)


def _nystrom_init(layer, data: dict, L: Tensor, softmax: bool) -> None:
    """Closed-form Nystrom-style init (module doc): the landmark points are queries / keys
    ``L`` of the first training sample; targets phi_t (B, H, N, r), psi_t (B, H, M, r) are
    fitted by linear least squares on [f; p] into each map's skip path and output bias, and
    the hidden path starts at zero (its output weight zeroed)."""
    q_in, k_in, p_q, p_k = data["q_in"], data["k_in"], data["p_q"], data["p_k"]
    B = q_in.shape[0]
    r = L.numel()
    qL = q_in[:1, L].expand(B, r, q_in.shape[2])
    kL = k_in[:1, L].expand(B, r, k_in.shape[2])
    pqL = p_q[:1, L].expand(B, r, p_q.shape[2])
    pkL = p_k[:1, L].expand(B, r, p_k.shape[2])
    with torch.no_grad():
        C = _dense_logits(layer, q_in, kL, p_q, pkL)                       # (B, H, N, r)
        Rt = _dense_logits(layer, qL, k_in, pqL, p_k).transpose(-1, -2)    # (B, H, M, r)
        if softmax:
            phi_t, psi_t = C, Rt
        else:
            U = _dense_logits(layer, qL[:1], kL[:1], pqL[:1], pkL[:1])[0]  # (H, r, r)
            phi_t, psi_t = C @ torch.linalg.pinv(U.double(), rtol=1e-8).to(C.dtype), Rt
        for fm, x, p, tgt in ((layer.lowrank_phi, q_in, p_q, phi_t),
                              (layer.lowrank_psi, k_in, p_k, psi_t)):
            n = x.shape[1]
            X = torch.cat([x, p.to(x.dtype).expand(B, n, p.shape[2]),
                           x.new_ones(B, n, 1)], -1).reshape(B * n, -1).double()
            Y = tgt.transpose(1, 2).reshape(B * n, -1).double()         # column h * F + r
            W = torch.linalg.lstsq(X, Y, driver="gelsd").solution      # (C + D + 1, H F)
            fm.skip.weight.copy_(W[:-1].T.to(fm.skip.weight.dtype))
            fm.out_layer.bias.copy_(W[-1].to(fm.out_layer.bias.dtype))
            fm.out_layer.weight.zero_()


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
def fit(dense_layer, sample_inputs, rank: int, steps: int, *, lr: float = 1e-2,
        holdout: float = 0.25, landmarks=None, progress: bool = True,
        generator: Optional[torch.Generator] = None, rows_per_step: Optional[int] = None,
        hidden: Optional[int] = None):
    r"""Distill a low-rank :class:`~itnet_ext.nn.IntegralTransform` from a dense one.

    Args:
        dense_layer: a trained ``IntegralTransform`` (its kernel is evaluated exactly whatever
            its ``method``); no ``window`` / ``offset_embedding`` (unsupported by lowrank).
        sample_inputs: batched inputs in the layer's layout: a tensor (self attention), a tuple
            ``(query[, key[, value]])``, or a dict of forward arguments (``query``, ``key``,
            ``value``, ``query_pos``, ``key_pos``, ``key_padding_mask``).
        rank: features per head F of the low-rank layer.
        steps: least-squares (Adam) steps (>= 0).
        lr: Adam's learning rate (cosine-decayed to lr / 100 over ``steps``).
        holdout: fraction in [0, 1) of the batch held out for the report (at least one sample
            each side when > 0); 0 reports on the training inputs.
        landmarks: None (random init), True (``rank`` landmark indices drawn from
            ``generator``), or ``rank`` distinct indices < min(N, M): Nystrom-style init (see
            the module doc).
        progress: show a progress bar (tqdm if installed, else lines on stderr).
        generator: CPU ``torch.Generator`` for the feature maps' init, the holdout split, the
            landmarks and the sampled rows (None: the global generator).
        rows_per_step: query rows sampled per step (default min(N, 64)).
        hidden: hidden width of the feature MLPs (default max(32, 2 rank)).

    Returns:
        ``(lowrank_layer, report)``: a new ``IntegralTransform(..., method="lowrank",
        rank=rank)`` holding the dense layer's parameters (value / output projections used;
        q/k / pair MLP kept, unused, see the class doc) plus the fitted feature maps, in
        training mode as the dense layer; and a :class:`LowRankFitReport`.
    """
    # ---- arguments ----------------------------------------------------------------------------
    # duck-typed: this package sits below itnet_ext.nn and does not import the layer
    if not callable(getattr(dense_layer, "_lowrank_twin", None)):
        raise ValueError(f"dense_layer: expected an IntegralTransform, got "
                         f"{type(dense_layer).__name__}")
    if dense_layer.window is not None or dense_layer.offset_table is not None:
        raise ValueError("dense_layer: a layer with window / offset_embedding cannot be "
                         "factorized by method='lowrank' (global support only)")

    def _pos_int(name, x, allow_zero=False):
        if isinstance(x, bool) or not isinstance(x, Integral) or x < (0 if allow_zero else 1):
            raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} "
                             f"int, got {x!r}")
        return int(x)

    rank = _pos_int("rank", rank)
    steps = _pos_int("steps", steps, allow_zero=True)
    if isinstance(lr, bool) or not isinstance(lr, Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, Real) or not 0 <= holdout < 1:
        raise ValueError(f"holdout: expected a fraction in [0, 1), got {holdout!r}")
    if rows_per_step is not None:
        rows_per_step = _pos_int("rows_per_step", rows_per_step)
    if hidden is not None:
        hidden = _pos_int("hidden", hidden)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator or None, got "
                         f"{type(generator).__name__}")
    if not isinstance(progress, bool):
        raise ValueError(f"progress: expected a bool, got {progress!r}")
    kw = _as_kwargs(sample_inputs)
    query = kw["query"]
    if not isinstance(query, Tensor) or query.dim() != 3:
        raise ValueError("sample_inputs: the query must be a batched 3-D tensor in the layer's "
                         f"layout, got {tuple(query.shape) if isinstance(query, Tensor) else query!r}")
    B = query.shape[0 if dense_layer.batch_first else 1]
    n_eval = int(round(holdout * B)) if holdout > 0 else 0
    if holdout > 0:
        n_eval = min(max(n_eval, 1), B - 1)
        if B < 2:
            raise ValueError(f"holdout: needs at least 2 samples in the batch, got {B} "
                             f"(pass holdout=0 to report on the training inputs)")

    # ---- the low-rank layer -------------------------------------------------------------------
    ref = dense_layer.out_proj.weight
    lr_layer = dense_layer._lowrank_twin(rank, hidden)
    feat_params = list(lr_layer.lowrank_phi.parameters()) + list(lr_layer.lowrank_psi.parameters())
    if generator is not None:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lr_layer.lowrank_phi.reset_parameters()
            lr_layer.lowrank_psi.reset_parameters()

    # ---- data -------------------------------------------------------------------------------
    perm = torch.randperm(B, generator=generator)
    eval_idx, train_idx = perm[:n_eval].sort().values, perm[n_eval:].sort().values
    train_kw = _split(kw, dense_layer, train_idx)
    eval_kw = _split(kw, dense_layer, eval_idx) if n_eval else train_kw
    train = _prepare(lr_layer, train_kw)
    N, M = train["q_in"].shape[1], train["k_in"].shape[1]
    softmax = dense_layer.normalize == "softmax"
    target = _target(train["logits"], train["support"], softmax)
    rows = min(N, rows_per_step or 64)

    # ---- Nystrom-style init ---------------------------------------------------------------------
    n_init = 0
    if landmarks is not None and landmarks is not False:
        if landmarks is True:
            L = torch.randperm(min(N, M), generator=generator)[:rank]
            if L.numel() < rank:
                raise ValueError(f"landmarks: need rank = {rank} landmarks but the samples have "
                                 f"only min(N, M) = {min(N, M)} points")
        else:
            try:
                L = torch.as_tensor(landmarks)
            except Exception:
                L = None
            if (L is None or L.dim() != 1 or L.numel() != rank or L.is_floating_point()
                    or L.dtype == torch.bool or L.unique().numel() != rank
                    or bool((L < 0).any()) or bool((L >= min(N, M)).any())):
                raise ValueError(f"landmarks: expected None, True, or {rank} (= rank) distinct "
                                 f"integer indices in [0, min(N, M) = {min(N, M)}), got "
                                 f"{landmarks!r}")
        L = L.long().to(ref.device)
        _nystrom_init(lr_layer, train, L, softmax)
        n_init = 1

    # ---- least squares ------------------------------------------------------------------------
    final_loss = float("nan")
    init_state = init_err = None
    if n_init and steps > 0:
        # Adam's first steps have size ~lr whatever the gradient: keep the init if they do
        # not improve on it (training kernel error)
        init_err = _kernel_rel_error(lr_layer, train, softmax)
        init_state = [p.detach().clone() for p in feat_params]
    if steps > 0:
        opt = torch.optim.Adam(feat_params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 100)
        bar = _Progress(steps, progress, "lowrank.fit")
        try:
            for _ in range(steps):
                idx = torch.randperm(N, generator=generator)[:rows].to(ref.device)
                with torch.enable_grad():
                    phi, psi = _features(
                        lr_layer, train["q_in"][:, idx], train["k_in"], train["p_q"][:, idx],
                        train["p_k"], train["padding"])
                    sup = train["support"][:, :, idx]
                    tgt = target[:, :, idx]
                    app = _approx(phi, psi, sup, softmax)
                    loss = (app - tgt).square().sum() / tgt.square().sum().clamp_min(1e-30)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                sched.step()
                final_loss = float(loss.detach())
                bar.update(final_loss)
        finally:
            bar.close()
    for p in feat_params:
        p.grad = None
    kept_init = False
    if init_state is not None and _kernel_rel_error(lr_layer, train, softmax) > init_err:
        with torch.no_grad():
            for p, p0 in zip(feat_params, init_state):
                p.copy_(p0)
        kept_init = True
        final_loss = init_err ** 2  # the init's loss, on every training row

    # ---- report -------------------------------------------------------------------------------
    ev = _prepare(lr_layer, eval_kw) if n_eval else train
    with torch.no_grad():
        dense_eval = copy.deepcopy(lr_layer).evaluate_with(method="dense")
        y_d = _forward(dense_eval, eval_kw)
        y_l = _forward(lr_layer, eval_kw)
        out_err = float(torch.linalg.vector_norm(y_l - y_d) / torch.linalg.vector_norm(y_d))
    report = LowRankFitReport(
        rank=rank, normalize=dense_layer.normalize, steps=steps, nystrom_init=bool(n_init), kept_init=kept_init,
        final_loss=final_loss, kernel_rel_error=_kernel_rel_error(lr_layer, ev, softmax),
        output_rel_error=out_err,
        train_kernel_rel_error=_kernel_rel_error(lr_layer, train, softmax),
        n_train=int(train_idx.numel()), n_eval=int(eval_idx.numel()) if n_eval else
        int(train_idx.numel()), evaluated_on="holdout" if n_eval else "train")
    return lr_layer, report
