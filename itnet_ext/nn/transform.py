"""The general ITNet layer: :class:`IntegralTransform`.

One layer computes, per query point ``i`` and head ``h``::

    y_i^h = sum_{j in S(i)} a_h(i, j) v_j^h

with the logit ``l_h(i, j)`` the sum of the enabled terms

    content term   s * <q_i^h, k_j^h>
    MLP term       sum_r W2[h, r] act(u_{i,r} + t_{j,r} + E[o(i, j), r]) + b2[h]

``u_i = A [f_i; p_i] + b1`` and ``t_j = B [f_j; p_j]`` are the first layer of
the pair MLP split by linearity (docs/design.md section 1). The parameters and
projections live here; the evaluation is the strategy's evaluator, chosen by
``method``: :mod:`itnet_ext.dense.evaluator` (``"dense"``),
:mod:`itnet_ext.sparse.evaluator` (``"sampled"``, ``"neighbors"``: it builds the pair
lists) or :mod:`itnet_ext.lowrank.evaluator` (``"lowrank"``). Each calls its fused op
looked up at call time, so the reference / fused backends are interchangeable.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as TF

from .._common.checks import NORMALIZATIONS, offset_layout
from .._common.layer_inputs import batch_first_inputs, layer_positions, layer_window
from .._common.names import ACTIVATIONS
from ..dense import evaluator as _dense
from ..lowrank import evaluator as _lowrank
from ..lowrank.feature_mlp import FeatureMLP
from ..sparse import evaluator as _sparse

__all__ = ["IntegralTransform"]


_KEEP = object()  # evaluate_with: "leave this setting as it is"

# method -> the strategy's evaluator: forward(layer, query, key, value, ...) gives the heads
_EVALUATORS = {"dense": _dense, "sampled": _sparse, "neighbors": _sparse, "lowrank": _lowrank}


class KernelInputs(NamedTuple):
    """What the dense and sparse evaluations feed their op: q, k (None without the content
    term), v (B, H, L, Dh); u (B, N, R), t (B, M, R) of the pair MLP (None without it); the
    positions p_q, p_k (None when nothing needs them) and q_pos, k_pos: the same, passed to
    the op only when a window or an offset table reads them."""
    q: Optional[Tensor]
    k: Optional[Tensor]
    v: Tensor
    u: Optional[Tensor]
    t: Optional[Tensor]
    p_q: Optional[Tensor]
    p_k: Optional[Tensor]
    q_pos: Optional[Tensor]
    k_pos: Optional[Tensor]


def _setting(name: str, doc: str) -> property:
    """An evaluation setting of IntegralTransform: reads ``_<name>``; assigning it is
    ``evaluate_with(<name>=value)`` (checked against the other settings)."""
    return property(lambda self: getattr(self, "_" + name),
                    lambda self, value: self.evaluate_with(**{name: value}), doc=doc)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# --------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------
class IntegralTransform(nn.Module):
    r"""ITNet learnable integral transform, a drop-in generalization of ``nn.MultiheadAttention``.

    Args:
        embed_dim: total model dimension ``E`` (query features, output features).
        num_heads: number of heads ``H``; must divide ``embed_dim``.
        kernel_hidden: hidden width ``R`` of the pair MLP; ``0`` turns the MLP term off.
        content: enable the content term ``<q_i, k_j> / sqrt(Dh)`` (q/k projections).
        activation: pair-MLP activation, ``"relu"``, ``"gelu"`` (tanh form) or ``"silu"``.
        normalize: ``"softmax"`` or ``"none"`` (a linear integral operator, ``a = l``).
        causal: always drop pairs with ``j > i`` (index based, top-left aligned).
        window: compact support over the positions: ``None``; a number ``w`` (offsets
            ``p_j - p_i`` in ``[-w, w]`` per dim); a pair ``(lo, hi)`` for every dim; or
            ``pos_dim`` pairs.
        pos_dim: number of position dims ``D``.
        offset_embedding: learned table ``E`` (window volume x R) indexed by the integer
            offset ``p_j - p_i`` (needs an integer ``window`` and ``kernel_hidden > 0``).
        relative_positions: tie position columns ``B_p = -A_p`` so the MLP sees ``p_i - p_j``.
        bias: biases of the q/k/v and output projections (as in ``nn.MultiheadAttention``).
        kdim, vdim: key / value feature sizes (default ``embed_dim``).
        batch_first: ``(B, N, E)`` inputs/outputs instead of ``(N, B, E)``.

        method: how the kernel is evaluated (docs/design.md section 2), with the same parameters:
            ``"dense"`` (exact, every key of the support; the default), ``"sampled"``
            (importance-weighted Monte Carlo: ``samples`` keys per query drawn from
            ``proposal``), ``"neighbors"`` (the pairs of a neighbourhood passed to
            ``forward(..., neighbors=...)``) or ``"lowrank"`` (learned factorization, needs
            ``rank``; see below).
        rank: ``method="lowrank"`` only (required there): features per head F.
        lowrank_hidden: ``method="lowrank"`` only: hidden width of the feature MLPs.
        samples: keys drawn per query by ``method="sampled"`` (an int >= 1; required there).
            For ``"stratified"`` the number of far-field draws.
        proposal: the sampling distribution q(j | i) of ``method="sampled"``, over the
            support of query i (keys not padded, ``j <= i`` when causal, inside ``window``):
            ``"uniform"`` (default); ``"local"``: a discretized Gaussian
            exp(-|p_j - p_i|^2 / (2 sigma^2)) around the query position (needs ``sigma``);
            ``"saliency"``: q(j | i) = softmax over the support of a per-key score passed as
            ``forward(..., key_scores=...)``; ``"stratified"``: every key inside
            ``near_window`` exactly (weight 1) plus ``samples`` uniform draws from the rest of
            the support (needs ``near_window``): the far field is the support (padding,
            causal, ``window``) outside ``near_window``.
        sigma: the ``"local"`` proposal's standard deviation in position units: a number or
            ``pos_dim`` numbers (> 0).
        near_window: the ``"stratified"`` proposal's exact near field, in the forms of
            ``window`` (offsets ``p_j - p_i``); it splits the support, it does not restrict it.

    Estimators (``method="sampled"``: unbiased for ``"none"``, self-normalized for
    ``"softmax"``, pathwise gradients): see :mod:`itnet_ext.sparse.evaluator`.

    Switching the method of a trained layer: the methods add no parameters or buffers, so a
    state dict moves freely between layers that differ only in these settings, and
    :meth:`evaluate_with` changes them in place (``layer.evaluate_with(method="sampled",
    samples=64)``; settings not named are kept; returns the layer). ``method``, ``samples``,
    ``proposal``, ``sigma`` and ``near_window`` are also properties; assigning one is
    ``evaluate_with`` with that one setting (checked against the others). They are
    configuration, like ``batch_first``, and are not part of the state dict.

    Low-rank factorization (``method="lowrank"``): learned feature maps ``lowrank_phi`` /
    ``lowrank_psi`` (:class:`itnet_ext.lowrank.FeatureMLP`, ``rank`` features per head,
    hidden width ``lowrank_hidden``, default max(32, 2 rank)); the kernel, its supports, the
    state-dict relation to a dense layer and the float32 position scale are described in
    :mod:`itnet_ext.lowrank.evaluator`.

    Parameters (names as in ``nn.MultiheadAttention`` so state dicts are exchangeable):
    ``in_proj_weight`` / ``in_proj_bias`` (or ``q_proj_weight``, ``k_proj_weight``,
    ``v_proj_weight`` when kdim/vdim differ from embed_dim), ``out_proj``. With
    ``content=False`` only the value projection ``v_proj_weight`` / ``v_proj_bias``.
    Pair MLP: ``kernel_A`` (R x (E + D)), ``kernel_b1`` (R), ``kernel_B`` (R x (kdim + D), or
    R x kdim with ``relative_positions``), ``kernel_W2`` (H x R), ``kernel_b2`` (H),
    ``offset_table`` (window volume x R).
    """

    # evaluation settings (class defaults: modules pickled before these existed stay dense)
    _method = "dense"
    _samples = None
    _proposal = "uniform"
    _sigma = None
    _near_window = None
    # method="lowrank" only: features per head (the feature maps are the submodules
    # lowrank_phi / lowrank_psi, None on other layers)
    rank = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kernel_hidden: int = 0,
        content: bool = True,
        activation: str = "gelu",
        normalize: str = "softmax",
        causal: bool = False,
        window=None,
        pos_dim: int = 1,
        offset_embedding: bool = False,
        relative_positions: bool = False,
        bias: bool = True,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        method: str = "dense",
        samples: Optional[int] = None,
        proposal: str = "uniform",
        sigma=None,
        near_window=None,
        rank: Optional[int] = None,
        lowrank_hidden: Optional[int] = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}

        def _pos_int(name, x, allow_zero=False):
            if not isinstance(x, int) or isinstance(x, bool) or x < (0 if allow_zero else 1):
                raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {x!r}")

        _pos_int("embed_dim", embed_dim)
        _pos_int("num_heads", num_heads)
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        _pos_int("kernel_hidden", kernel_hidden, allow_zero=True)
        _pos_int("pos_dim", pos_dim)
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        _pos_int("kdim", kdim)
        _pos_int("vdim", vdim)
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("normalize", normalize, NORMALIZATIONS)
        if not content and kernel_hidden == 0:
            raise ValueError(
                "at least one logit term is needed: content=True and/or kernel_hidden > 0"
            )
        window = layer_window(window, pos_dim)
        if offset_embedding:
            if kernel_hidden == 0:
                raise ValueError("offset_embedding=True needs the MLP term (kernel_hidden > 0)")
            if window is None:
                raise ValueError("offset_embedding=True requires a window (the table covers the window box)")
            if not all(isinstance(lo, int) and isinstance(hi, int) for lo, hi in window):
                raise ValueError(f"offset_embedding=True requires integer window bounds, got {window}")
        if relative_positions and kernel_hidden == 0:
            raise ValueError("relative_positions=True needs the MLP term (kernel_hidden > 0)")
        lowrank = method == "lowrank"
        _lowrank.check_config(lowrank, rank, lowrank_hidden, offset_embedding, window, method)
        self._method, self._samples, self._proposal, self._sigma, self._near_window = \
            _sparse.check_method_config("dense" if lowrank else method, samples, proposal, sigma,
                                        near_window, pos_dim)
        if lowrank:
            self._method = "lowrank"

        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kernel_hidden = kernel_hidden
        self.content = bool(content)
        self.activation = activation
        self.normalize = normalize
        self.causal = bool(causal)
        self.window = window
        self.pos_dim = pos_dim
        self.offset_embedding = bool(offset_embedding)
        self.relative_positions = bool(relative_positions)
        self.kdim = kdim
        self.vdim = vdim
        self.batch_first = batch_first
        self._qkv_same_embed_dim = kdim == embed_dim and vdim == embed_dim

        E = embed_dim
        # --- q/k/v projections (nn.MultiheadAttention layout) ---
        if self.content:
            if self._qkv_same_embed_dim:
                self.in_proj_weight = nn.Parameter(torch.empty((3 * E, E), **factory_kwargs))
                self.register_parameter("q_proj_weight", None)
                self.register_parameter("k_proj_weight", None)
                self.register_parameter("v_proj_weight", None)
            else:
                self.q_proj_weight = nn.Parameter(torch.empty((E, E), **factory_kwargs))
                self.k_proj_weight = nn.Parameter(torch.empty((E, kdim), **factory_kwargs))
                self.v_proj_weight = nn.Parameter(torch.empty((E, vdim), **factory_kwargs))
                self.register_parameter("in_proj_weight", None)
            if bias:
                self.in_proj_bias = nn.Parameter(torch.empty(3 * E, **factory_kwargs))
            else:
                self.register_parameter("in_proj_bias", None)
            self.register_parameter("v_proj_bias", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("in_proj_bias", None)
            self.v_proj_weight = nn.Parameter(torch.empty((E, vdim), **factory_kwargs))
            if bias:
                self.v_proj_bias = nn.Parameter(torch.empty(E, **factory_kwargs))
            else:
                self.register_parameter("v_proj_bias", None)
        self.out_proj = nn.Linear(E, E, bias=bias, **factory_kwargs)

        # --- pair MLP ---
        R = kernel_hidden
        D = pos_dim
        if R > 0:
            self.kernel_A = nn.Parameter(torch.empty((R, E + D), **factory_kwargs))
            self.kernel_b1 = nn.Parameter(torch.empty(R, **factory_kwargs))
            kb_cols = kdim if self.relative_positions else kdim + D
            self.kernel_B = nn.Parameter(torch.empty((R, kb_cols), **factory_kwargs))
            self.kernel_W2 = nn.Parameter(torch.empty((num_heads, R), **factory_kwargs))
            self.kernel_b2 = nn.Parameter(torch.empty(num_heads, **factory_kwargs))
        else:
            for name in ("kernel_A", "kernel_b1", "kernel_B", "kernel_W2", "kernel_b2"):
                self.register_parameter(name, None)
        if self.offset_embedding:
            self.offset_table = nn.Parameter(torch.empty((offset_layout(window)[2], R), **factory_kwargs))
        else:
            self.register_parameter("offset_table", None)

        # --- learned low-rank feature maps (method="lowrank") ---
        if lowrank:
            hid = lowrank_hidden if lowrank_hidden is not None else max(32, 2 * rank)
            self.rank = rank
            self.lowrank_phi = FeatureMLP(E, D, num_heads, rank, hid, **factory_kwargs)
            self.lowrank_psi = FeatureMLP(kdim, D, num_heads, rank, hid, **factory_kwargs)
        else:
            self.lowrank_phi = self.lowrank_psi = None

        self._reset_parameters()

    # ----------------------------------------------------------------------------------
    def _reset_parameters(self) -> None:
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.xavier_uniform_(w)
        for b in (self.in_proj_bias, self.v_proj_bias):
            if b is not None:
                nn.init.zeros_(b)
        self.out_proj.reset_parameters()
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)
        if self.kernel_hidden > 0:
            bound_a = 1.0 / math.sqrt(self.kernel_A.shape[1])
            nn.init.uniform_(self.kernel_A, -bound_a, bound_a)
            nn.init.uniform_(self.kernel_b1, -bound_a, bound_a)
            bound_b = 1.0 / math.sqrt(self.kdim + self.pos_dim)
            nn.init.uniform_(self.kernel_B, -bound_b, bound_b)
            bound_w = 1.0 / math.sqrt(self.kernel_hidden)
            nn.init.uniform_(self.kernel_W2, -bound_w, bound_w)
            nn.init.zeros_(self.kernel_b2)
        if self.offset_table is not None:
            nn.init.normal_(self.offset_table, std=0.02)
        if getattr(self, "lowrank_phi", None) is not None:
            self.lowrank_phi.reset_parameters()
            self.lowrank_psi.reset_parameters()

    reset_parameters = _reset_parameters

    # ----------------------------------------------------------------------------------
    # evaluation method (configuration, not state)
    # ----------------------------------------------------------------------------------
    def evaluate_with(
        self,
        method=_KEEP,
        *,
        samples=_KEEP,
        proposal=_KEEP,
        sigma=_KEEP,
        near_window=_KEEP,
    ) -> "IntegralTransform":
        """Set how ``forward`` evaluates the kernel; settings not given are kept.

        Same arguments as the constructor (``method``, ``samples``, ``proposal``, ``sigma``,
        ``near_window``), checked together: e.g. ``method="sampled"`` needs ``samples``.
        Parameters are untouched. Returns ``self`` (``layer.evaluate_with(method="sampled",
        samples=32)(x)``, like ``.eval()``). On a bad argument nothing changes."""
        cur = (self._method, self._samples, self._proposal, self._sigma, self._near_window)
        new = tuple(c if n is _KEEP else n for c, n in zip(
            cur, (method, samples, proposal, sigma, near_window)))
        lowrank = new[0] == "lowrank"
        if lowrank and getattr(self, "lowrank_phi", None) is None:
            raise ValueError("method='lowrank' needs the learned feature maps: build the layer "
                             "with IntegralTransform(..., method='lowrank', rank=F) or use "
                             "itnet_ext.lowrank.fit(dense_layer, ...)")
        checked = _sparse.check_method_config("dense" if lowrank else new[0], *new[1:],
                                              self.pos_dim)
        (self._method, self._samples, self._proposal, self._sigma,
         self._near_window) = checked
        if lowrank:
            self._method = "lowrank"
        return self

    # each evaluation setting reads as a property; assigning one is evaluate_with(name=value)
    method = _setting("method", '''``"dense"``, ``"sampled"``, ``"neighbors"`` or ``"lowrank"``
        (only on a layer built with ``method="lowrank"``, which holds the feature maps);
        assignable (see :meth:`evaluate_with`).''')
    samples = _setting("samples", "Keys drawn per query by ``method=\"sampled\"``; assignable.")
    proposal = _setting("proposal", "The proposal of ``method=\"sampled\"``; assignable.")
    sigma = _setting("sigma", "The ``\"local\"`` proposal's standard deviation per position dim "
                     "(a tuple); assignable.")
    near_window = _setting("near_window", "The ``\"stratified\"`` proposal's near field "
                           "(``pos_dim`` pairs); assignable.")

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if self.kernel_hidden:
            s += f", kernel_hidden={self.kernel_hidden}, activation={self.activation!r}"
        s += f", content={self.content}, normalize={self.normalize!r}"
        if self.causal:
            s += ", causal=True"
        if self.window is not None:
            s += f", window={self.window}"
        if self.pos_dim != 1:
            s += f", pos_dim={self.pos_dim}"
        if self.offset_embedding:
            s += ", offset_embedding=True"
        if self.relative_positions:
            s += ", relative_positions=True"
        if not self._qkv_same_embed_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        if self.batch_first:
            s += ", batch_first=True"
        if self._method != "dense":
            s += f", method={self._method!r}"
        if getattr(self, "lowrank_phi", None) is not None:
            s += f", rank={self.rank}"
        if self._method == "sampled":
            s += f", samples={self._samples}, proposal={self._proposal!r}"
            if self._proposal == "local":
                s += f", sigma={self._sigma}"
            if self._proposal == "stratified":
                s += f", near_window={self._near_window}"
        return s

    # ----------------------------------------------------------------------------------
    # building blocks
    # ----------------------------------------------------------------------------------
    def _in_projection(self, query: Tensor, key: Tensor, value: Tensor):
        """Project (B, L, C) inputs; returns q, k (or None), v as (B, H, L, Dh)."""
        E = self.embed_dim
        H, Dh = self.num_heads, self.head_dim
        if self.content:
            b = self.in_proj_bias
            bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
            if self._qkv_same_embed_dim:
                wq, wk, wv = self.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            q = TF.linear(query, wq, bq)
            k = TF.linear(key, wk, bk)
        else:
            wv, bv = self.v_proj_weight, self.v_proj_bias
            q = k = None
        v = TF.linear(value, wv, bv)

        def heads(x):
            return x.view(x.shape[0], x.shape[1], H, Dh).transpose(1, 2)

        return (None if q is None else heads(q)), (None if k is None else heads(k)), heads(v)

    def _positions(self, pos: Optional[Tensor], name: str, batch: int, length: int, like: Tensor) -> Tensor:
        return layer_positions(pos, name, batch, length, like, self.pos_dim)

    def _mlp_inputs(self, query: Tensor, key: Tensor, p_q: Tensor, p_k: Tensor):
        """u (B, N, R) and t (B, M, R) of the pair MLP."""
        E, D = self.embed_dim, self.pos_dim
        A = self.kernel_A
        A_f, A_p = A[:, :E], A[:, E:]
        u = TF.linear(query, A_f, self.kernel_b1) + TF.linear(p_q.to(query.dtype), A_p)
        if self.relative_positions:
            B_f, B_p = self.kernel_B, -A_p
        else:
            B_f, B_p = self.kernel_B[:, : self.kdim], self.kernel_B[:, self.kdim :]
        t = TF.linear(key, B_f) + TF.linear(p_k.to(key.dtype), B_p)
        return u, t

    def _value_projection(self, value: Tensor) -> Tensor:
        """v (B, H, M, Dh) from batch-first values (the value part of the in projection)."""
        if self.content:
            b = self.in_proj_bias
            bv = None if b is None else b.chunk(3)[2]
            wv = self.in_proj_weight.chunk(3)[2] if self._qkv_same_embed_dim else self.v_proj_weight
        else:
            wv, bv = self.v_proj_weight, self.v_proj_bias
        v = TF.linear(value, wv, bv)
        return v.view(v.shape[0], v.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _query_key_positions(self, query: Tensor, key: Tensor, query_pos, key_pos,
                             self_attention: bool):
        """p_q (B or 1, N, D), p_k (B or 1, M, D); in self attention key_pos defaults to
        query_pos."""
        B, N, M = query.shape[0], query.shape[1], key.shape[1]
        p_q = self._positions(query_pos, "query_pos", B, N, query)
        if key_pos is None and self_attention and query_pos is not None:
            return p_q, p_q
        return p_q, self._positions(key_pos, "key_pos", B, M, query)

    def _kernel_inputs(self, query: Tensor, key: Tensor, value: Tensor, *, query_pos, key_pos,
                       self_attention: bool, projected=None,
                       sampler_pos: bool = False) -> KernelInputs:
        """The projections of batch-first (B, L, C) inputs for the dense and sparse ops
        (``projected``: q, k, v already computed). ``sampler_pos``: the sampler needs the
        positions even when the kernel does not."""
        q, k, v = self._in_projection(query, key, value) if projected is None else projected
        need_pos = self.kernel_hidden > 0 or self.window is not None or self.offset_table is not None
        p_q = p_k = None
        if need_pos or sampler_pos:
            p_q, p_k = self._query_key_positions(query, key, query_pos, key_pos, self_attention)
        u = t = None
        if self.kernel_hidden > 0:
            u, t = self._mlp_inputs(query, key, p_q, p_k)
        use_pos = self.window is not None or self.offset_table is not None
        return KernelInputs(q, k, v, u, t, p_q, p_k, p_q if use_pos else None,
                            p_k if use_pos else None)

    def _transform(self, query: Tensor, key: Tensor, value: Tensor, *, query_pos, key_pos,
                   self_attention: bool, key_padding_mask, attn_mask, causal: bool,
                   projected=None, sparse: Optional[dict] = None) -> Tensor:
        """Head outputs (B, H, N, Dh) of batch-first inputs with the masks already in the
        op's convention (the converters' entry): the dense evaluation, or the sparse one
        (``sparse``: see :func:`itnet_ext.sparse.evaluator.evaluate`)."""
        kw = dict(query_pos=query_pos, key_pos=key_pos, self_attention=self_attention,
                  key_padding_mask=key_padding_mask, attn_mask=attn_mask, causal=causal,
                  projected=projected)
        if self._method == "dense":
            return _dense.evaluate(self, query, key, value, **kw)
        return _sparse.evaluate(self, query, key, value, sparse=sparse, **kw)

    def _lowrank_twin(self, rank: int, hidden: Optional[int]) -> "IntegralTransform":
        """A new ``method="lowrank"`` layer with this layer's configuration and (strictly
        loaded) shared parameters; its feature maps fresh (what :func:`itnet_ext.lowrank.fit`
        starts from)."""
        ref = self.out_proj.weight
        twin = IntegralTransform(
            self.embed_dim, self.num_heads, kernel_hidden=self.kernel_hidden,
            content=self.content, activation=self.activation, normalize=self.normalize,
            causal=self.causal, pos_dim=self.pos_dim, relative_positions=self.relative_positions,
            bias=self.out_proj.bias is not None, kdim=self.kdim, vdim=self.vdim,
            batch_first=self.batch_first, device=ref.device, dtype=ref.dtype, method="lowrank",
            rank=rank, lowrank_hidden=hidden)
        res = twin.load_state_dict(self.state_dict(), strict=False)
        if res.unexpected_keys or not all(k.startswith("lowrank_") for k in res.missing_keys):
            raise RuntimeError(f"IntegralTransform._lowrank_twin: state dicts differ beyond the "
                               f"feature maps: {res}")
        return twin.train(self.training)

    def _out(self, heads: Tensor, is_batched: bool) -> Tensor:
        B, H, N, Dh = heads.shape
        y = self.out_proj(heads.transpose(1, 2).reshape(B, N, H * Dh))
        if not is_batched:
            return y.squeeze(0)
        return y if self.batch_first else y.transpose(0, 1)

    # ----------------------------------------------------------------------------------
    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        *,
        query_pos: Optional[Tensor] = None,
        key_pos: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
        generator: Optional[torch.Generator] = None,
        neighbors=None,
        key_scores: Optional[Tensor] = None,
    ) -> Tensor:
        r"""Apply the transform.

        Args:
            query: ``(N, B, E)`` (``(B, N, E)`` with ``batch_first``) or unbatched ``(N, E)``.
            key: ``(M, B, kdim)``-like; defaults to ``query`` (self attention).
            value: ``(M, B, vdim)``-like; defaults to ``key``.
            query_pos / key_pos: positions ``(B or 1, N, pos_dim)`` (always batch-first; ``(N, pos_dim)``
                also accepted). Default: the integer index (``pos_dim == 1`` only); in self attention
                ``key_pos`` defaults to ``query_pos``.
            key_padding_mask: ``(B, M)`` (``(M,)`` unbatched); bool True = ignore that key, or float additive.
            attn_mask: ``(N, M)`` or ``(B * num_heads, N, M)``; bool True = pair NOT allowed, or float
                additive (``nn.MultiheadAttention`` conventions).
            is_causal: apply the causal mask (``j > i`` dropped) in this call, in addition to
                ``attn_mask`` and to the constructor's ``causal``.
            generator: ``method="sampled"``: the CPU ``torch.Generator`` the keys are drawn from
                (the same seed gives the same output, on every device); None uses the global
                CPU generator. Ignored by the other methods.
            neighbors: ``method="neighbors"`` (required there, rejected otherwise): the pairs,
                batch-major whatever ``batch_first`` (unbatched: without the B dim): padded
                ``idx`` (B, N, S) int64 or ``(idx, log_w)``, or CSR ``(row_ptr, col_idx)`` /
                ``(row_ptr, col_idx, log_w)`` with row_ptr (B, N + 1), col_idx (B, E), as
                returned by :func:`~itnet_ext.nn.radius_graph` / :func:`~itnet_ext.nn.knn_graph`
                (layout: ``itnet_ext.sparse.validate``). ``log_w`` (default 0; -inf = absent
                pair) is a per-pair log-weight: softmax weights exp(l + log_w), none weights
                l * exp(log_w) (a quadrature weight). Pairs with a padded key, and with j > i
                when causal, are dropped; pairs outside ``window`` too.
            key_scores: ``proposal="saliency"`` (required there, rejected otherwise): per-key
                log-scores (B, M) or (1, M) ((M,) unbatched), e.g. a learned or heuristic
                relevance; keys are drawn with q(j | i) proportional to exp(score_j) over the
                support of query i. Detached: the estimate is unbiased (none) / consistent
                (softmax) whatever the scores; they only change its variance.

        With ``method="sampled"`` / ``"neighbors"``, ``attn_mask`` is not supported (a
        ValueError); the support comes from ``key_padding_mask`` (bool, or float with
        only 0 / -inf entries, or any finite additive values in softmax mode), ``causal`` /
        ``is_causal`` and ``window``.

        Returns:
            the output, same layout as ``query``. A query with no admissible key outputs
            ``out_proj.bias`` (its transform output is exactly 0).
        """
        self_attention = key is None or key is query
        if key is None:
            key = query
        if value is None:
            value = key
        q_in, k_in, v_in, is_batched = batch_first_inputs(self, query, key, value)
        # a per-layer evaluator (itnet_ext.distributed.shard_layer installs one) wins
        evaluator = self.__dict__.get("_sharded_evaluator") or _EVALUATORS[self._method]
        heads = evaluator.forward(
            self, q_in, k_in, v_in, query_pos=query_pos, key_pos=key_pos,
            self_attention=self_attention, key_padding_mask=key_padding_mask,
            attn_mask=attn_mask, causal=self.causal or bool(is_causal), is_batched=is_batched,
            generator=generator, neighbors=neighbors, key_scores=key_scores)
        return self._out(heads, is_batched)
