"""Per-example LoRA gradients in batches, the Adam direction, and projected features.

METHODS.md §0 stages 2-3: for every item, the gradient of its loss w.r.t. the LoRA parameters
(train side: turned into the Adam direction ``Γ = m'/sqrt(v' + eps)``), randomly projected to
``k`` dimensions and L2-normalised. The reference code gets per-example gradients with batch
size 1 and one backward per example (:func:`loop_gradients`, kept as the reference and the
benchmark baseline). :class:`PerSampleGradients` gets the same vectors from one batched
backward: a LoRA factor is an ``nn.Linear`` ``y = W x``, so the gradient of row ``b``'s loss
w.r.t. ``W`` is ``Σ_t (∂L_b/∂y_bt) x_btᵀ`` = ``einsum('bto,bti->boi', grad_out, input)``.
Padding adds nothing because the loss does not depend on padded positions (zero grad_out).

The model must be in eval mode: dropout would make every gradient random (METHODS.md §0) and
different from the reference. Gradient checkpointing is not supported (it re-runs forwards).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curation.engine.objectives import Batch, Objective
from curation.engine.projection import Projector

ParamFilter = Callable[[str, nn.Parameter], bool]
GradCallback = Callable[[str, Tensor], None]  # (parameter name, grads [n_items, numel])
AdamState = Mapping[str, tuple[Tensor, Tensor]]  # parameter name -> (exp_avg, exp_avg_sq)


def is_lora_param(name: str, param: nn.Parameter) -> bool:
    """The default selection: trainable PEFT LoRA factors (``lora_A`` / ``lora_B``)."""
    return param.requires_grad and ("lora_A." in name or "lora_B." in name)


def selected_params(model: nn.Module, param_filter: ParamFilter = is_lora_param) -> dict[str, nn.Parameter]:
    """``named_parameters()`` names (they key the Adam moments) of the parameters we featurize."""
    params = {n: p for n, p in model.named_parameters() if param_filter(n, p)}
    if not params:
        raise ValueError("no parameter passed the filter: is the LoRA adapter attached and trainable?")
    return params


def adam_direction(g: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, beta1: float = 0.9,
                   beta2: float = 0.999, eps: float = 1e-8) -> Tensor:
    """``Γ = m'/sqrt(v' + eps)`` with ``m' = β1 m + (1-β1) g``, ``v' = β2 v + (1-β2) g²``.

    METHODS.md §0 stage 2, exactly as LESS: no bias correction, eps *inside* the sqrt. ``g``
    may carry a leading item dimension; the moments broadcast over it.
    """
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g * g
    return m / torch.sqrt(v + eps)


def per_item_weight_grad(grad_out: Tensor, inputs: Tensor, item_index: Tensor, n_items: int,
                         rows_are_items: bool | None = None) -> Tensor:
    """Per-item gradient of a Linear's weight, flattened like ``weight.reshape(-1)``: ``[n, o*i]``.

    ``grad_out: [R, ..., o]`` and ``inputs: [R, ..., i]`` hold one row per sequence; rows of
    one item are summed (their losses add up to the item's loss). Accumulates in ≥ float32.
    ``rows_are_items`` (from `Batch`, known on the host) skips the check that would otherwise
    wait for the GPU once per layer.
    """
    rows = grad_out.shape[0]
    dtype = torch.promote_types(grad_out.dtype, torch.float32)
    g = grad_out.reshape(rows, -1, grad_out.shape[-1]).to(dtype)
    x = inputs.reshape(rows, -1, inputs.shape[-1]).to(dtype)
    per_row = torch.einsum("bto,bti->boi", g, x).reshape(rows, -1)
    if rows_are_items is None:
        rows_are_items = rows == n_items and torch.equal(item_index, torch.arange(rows, device=item_index.device))
    if rows_are_items:
        return per_row
    return per_row.new_zeros(n_items, per_row.shape[1]).index_add_(0, item_index, per_row)


LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")  # decoder layer of a parameter name (HF naming)


def layer_index(name: str) -> int | None:
    """The decoder layer a parameter belongs to (``...layers.7.self_attn...`` -> 7), or None."""
    found = LAYER_INDEX.search(name)
    return int(found.group(1)) if found else None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: the longest ``ModuleList`` whose name ends in ``layers``."""
    stacks = [(len(m), m) for n, m in model.named_modules() if n.endswith("layers") and isinstance(m, nn.ModuleList)]
    if not stacks:
        raise ValueError("the model has no `layers` ModuleList: top-layer LoRA features need a decoder stack")
    return max(stacks, key=lambda t: t[0])[1]


def top_layer_names(names: Sequence[str], n_layers: int, top: int) -> list[str]:
    """The names (in their order) that belong to the top ``top`` of ``n_layers`` decoder layers;
    all of them when ``top`` is 0 or covers the stack."""
    if top <= 0 or top >= n_layers:
        return list(names)
    return [n for n in names if (layer_index(n) or 0) >= n_layers - top]


def _detach_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the layer's tensor inputs leave any graph below it."""
    def cut(x):
        return x.detach() if isinstance(x, Tensor) else x
    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


@contextmanager
def top_layers(model: nn.Module, top: int) -> Iterator[None]:
    """Within: only the LoRA factors of the top ``top`` decoder layers are featurized, and no
    backward runs below the lowest of them (``top`` 0: every layer, nothing changes).

    Why this way: the LoRA factors of the lower layers stop requiring grad, so with the base
    weights frozen nothing below the lowest LoRA layer requires grad and autograd records no
    node and saves no activation there (what ``no_grad`` would do, without wrapping HF's
    forward); a pre-hook detaches that layer's inputs as well, so even a trainable parameter
    below (an unfrozen embedding) starts no graph. The warmup is unchanged (LoRA on every
    layer, shared with full runs), so the features are exactly the full run's per-layer
    gradients of those layers, Adam moments and per-layer projection seeds included.
    """
    stack = decoder_layers(model)
    lowest = len(stack) - top
    if top <= 0 or lowest <= 0:
        yield
        return
    frozen = [p for n, p in model.named_parameters()
              if is_lora_param(n, p) and (layer_index(n) is None or layer_index(n) < lowest)]
    for p in frozen:
        p.requires_grad_(False)
    handle = stack[lowest].register_forward_pre_hook(_detach_inputs, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for p in frozen:
            p.requires_grad_(True)


class PerSampleGradients:
    """Hooks every selected LoRA ``nn.Linear`` to get per-item weight gradients from one backward.

    A forward hook saves each layer's input and puts a hook on its output; when backward
    reaches that output, the per-item gradient is formed at once and handed to a callback, so
    layers can be projected one at a time without all of them in memory. Use as a context
    manager; :meth:`compute` runs one batch.
    """

    def __init__(self, model: nn.Module, param_filter: ParamFilter = is_lora_param):
        self.model = model
        self.params = selected_params(model, param_filter)
        self.modules = self._modules_of(model, self.params)
        self._handles: list = []
        self._inputs: dict[str, Tensor] = {}
        self._batch: Batch | None = None
        self._emit: GradCallback | None = None

    @staticmethod
    def _modules_of(model: nn.Module, params: Mapping[str, nn.Parameter]) -> dict[str, nn.Module]:
        """Parameter name -> the ``nn.Linear`` whose weight it is (anything else is refused)."""
        found = {}
        for mod_name, module in model.named_modules():
            name = f"{mod_name}.weight"
            if name in params and isinstance(module, nn.Linear) and module.bias is None:
                found[name] = module
        missing = sorted(set(params) - set(found))
        if missing:
            raise ValueError(f"per-sample gradients support bias-free nn.Linear weights only: {missing[:3]}")
        return found

    def __enter__(self) -> PerSampleGradients:
        if self.model.training:
            raise ValueError("call model.eval() first: dropout makes per-example gradients random")
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(partial(self._forward_hook, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()

    def _forward_hook(self, name: str, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self._batch is None or not torch.is_grad_enabled():
            return  # not ours (e.g. the DPO reference pass under no_grad)
        if name in self._inputs:
            raise RuntimeError(f"{name} ran twice in one batch: one forward per batch is required")
        self._inputs[name] = inputs[0].detach()
        output.register_hook(partial(self._backward_hook, name))

    def _backward_hook(self, name: str, grad_out: Tensor) -> None:
        batch = self._batch
        # On CPU backward runs in the caller's thread: keep a forward autocast out of the
        # per-item products (they accumulate in float32 whatever the forward's precision).
        with torch.no_grad(), torch.autocast(grad_out.device.type, enabled=False):
            grads = per_item_weight_grad(grad_out, self._inputs.pop(name), batch.item_index, batch.n_items,
                                         batch.rows_are_items)
            self._emit(name, grads)

    def compute(self, objective: Objective, batch: Batch, on_grad: GradCallback | None = None,
                autocast: torch.dtype | None = None) -> dict[str, Tensor] | None:
        """Per-item gradients of ``objective`` on ``batch``.

        With ``on_grad`` each layer's ``[n_items, numel]`` gradient goes to the callback as soon
        as it exists and nothing is returned; without it a dict name -> tensor is returned
        (layers that the loss does not reach get zeros). The model's ``.grad`` is untouched.
        ``autocast`` (e.g. bfloat16 on CUDA) runs the forward under `torch.autocast`; the
        backward follows its dtypes and the per-item gradients are still formed in float32.
        """
        if not self._handles:
            raise RuntimeError("use PerSampleGradients as a context manager")
        collected: dict[str, Tensor] = {}
        batch = batch.to(next(iter(self.params.values())).device)
        self._batch, self._emit = batch, on_grad or collected.__setitem__
        try:
            with torch.autocast(batch.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = objective.loss(self.model, batch)
            if not self._inputs:
                raise RuntimeError("no LoRA layer ran with gradients (adapter merged or disabled?)")
            # Only drives the backward that fires the hooks; the summed parameter gradients it
            # returns are dropped (LoRA weight gradients are a small share of the backward).
            torch.autograd.grad(loss.sum(), list(self.params.values()), allow_unused=True)
        finally:
            self._batch, self._emit = None, None
            self._inputs.clear()
        if on_grad is None:
            return self._fill_missing(collected, batch.n_items)
        return None

    def _fill_missing(self, grads: dict[str, Tensor], n_items: int) -> dict[str, Tensor]:
        """Zeros for layers the loss does not reach, in ``named_parameters()`` order."""
        def zeros(p: nn.Parameter) -> Tensor:
            return p.new_zeros(n_items, p.numel(), dtype=torch.promote_types(p.dtype, torch.float32))
        return {name: grads[name] if name in grads else zeros(p) for name, p in self.params.items()}


def item_gradients(model: nn.Module, item: Batch, objective: Objective,
                   params: Mapping[str, nn.Parameter]) -> dict[str, Tensor]:
    """The reference way for one item: its loss, one ``autograd.grad``; name -> ``[1, numel]``."""
    if item.n_items != 1:
        raise ValueError("the reference path takes one item at a time")
    grads = torch.autograd.grad(objective.loss(model, item).sum(), list(params.values()), allow_unused=True)
    return {name: (torch.zeros_like(p) if g is None else g).reshape(1, -1)
            for (name, p), g in zip(params.items(), grads)}


def loop_gradients(model: nn.Module, items: Iterable[Batch], objective: Objective,
                   param_filter: ParamFilter = is_lora_param) -> dict[str, Tensor]:
    """Per-item gradients the LESS way: batch size 1, one backward per item; name -> ``[N, numel]``."""
    params = selected_params(model, param_filter)
    per_item = [item_gradients(model, item, objective, params) for item in items]
    return {name: torch.cat([g[name] for g in per_item]) for name in params}


def _device_state(state: AdamState, params: Mapping[str, nn.Parameter]) -> dict[str, tuple[Tensor, Tensor]]:
    """Check the moments cover every parameter with its shape; flatten and move them once."""
    out = {}
    for name, param in params.items():
        if name not in state:
            raise KeyError(f"optimizer state has no moments for {name} (keys must be parameter names)")
        m, v = state[name]
        if m.numel() != param.numel() or v.numel() != param.numel():
            raise ValueError(f"optimizer moments of {name} do not match the parameter's shape")
        dtype = torch.promote_types(param.dtype, torch.float32)
        out[name] = (m.reshape(-1).to(param.device, dtype), v.reshape(-1).to(param.device, dtype))
    return out


class _FeatureSum:
    """Callback that turns layer gradients into a running sum of projections (one batch)."""

    def __init__(self, projector: Projector, state: Mapping[str, tuple[Tensor, Tensor]] | None,
                 betas: tuple[float, float], eps: float):
        self.projector, self.state, self.betas, self.eps = projector, state, betas, eps
        self.total: Tensor | None = None

    def __call__(self, name: str, grads: Tensor) -> None:
        if self.state is not None:  # train side: Adam direction (METHODS.md §0 stage 2)
            grads = adam_direction(grads, *self.state[name], *self.betas, self.eps)
        if self.total is None:
            self.total = grads.new_zeros(grads.shape[0], self.projector.k)
        self.projector.accumulate(name, grads, self.total)

    def features(self, n_items: int, normalize: bool = True) -> _HostCopy:
        """The batch's (normalised) features, on their way to the host (see `_HostCopy`)."""
        if self.total is None:
            return _HostCopy(torch.zeros(n_items, self.projector.k))
        return _HostCopy((F.normalize(self.total, dim=1) if normalize else self.total).float())


class _HostCopy:
    """A device-to-host copy that does not wait: on CUDA into pinned memory with
    ``non_blocking`` and an event, so the next batch's kernels are queued before the host
    blocks on this one (`iter_features` yields one batch late). On CPU it is the tensor."""

    def __init__(self, t: Tensor):
        self.event = None
        if t.is_cuda:
            self.host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self.host.copy_(t, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = t

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def iter_features(model: nn.Module, batches: Iterable[Batch], objective: Objective, projector: Projector,
                  optimizer_state: AdamState | None = None, *, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8, param_filter: ParamFilter = is_lora_param,
                  loop: bool = False, autocast: torch.dtype | None = None,
                  normalize: bool = True) -> Iterator[np.ndarray]:
    """Yield ``[n_items, k]`` float32 features per batch (so callers can save and resume per batch).

    Per item: per-layer gradient -> Adam direction if ``optimizer_state`` (train side) ->
    projection -> sum over layers (exact, see :mod:`curation.engine.projection`) -> L2 normalisation.
    ``loop=True`` gets the gradients the reference way (one backward per item) instead.
    ``normalize=False`` keeps the projected gradients' lengths (the contrast method mixes the
    chosen and rejected gradients of a pair before normalising).
    ``autocast``: the forward's precision (`PerSampleGradients.compute`). Each batch's
    features are yielded once the next batch is queued, so a GPU never idles on the copy.
    """
    device = next(model.parameters()).device
    params = selected_params(model, param_filter)
    state = None if optimizer_state is None else _device_state(optimizer_state, params)
    pending: _HostCopy | None = None
    with PerSampleGradients(model, param_filter) as psg:
        for batch in batches:
            batch = batch.to(device)
            if loop:
                yield np.concatenate([_loop_item(model, item, objective, params, projector, state, betas, eps,
                                                 normalize) for item in batch.split()])
                continue
            acc = _FeatureSum(projector, state, betas, eps)
            psg.compute(objective, batch, acc, autocast=autocast)
            ready = acc.features(batch.n_items, normalize)
            if pending is not None:
                yield pending.result()
            pending = ready
    if pending is not None:
        yield pending.result()


def _loop_item(model, item, objective, params, projector, state, betas, eps, normalize=True) -> np.ndarray:
    acc = _FeatureSum(projector, state, betas, eps)
    for name, grads in item_gradients(model, item, objective, params).items():
        acc(name, grads.to(torch.promote_types(grads.dtype, torch.float32)))
    return acc.features(1, normalize).result()


def featurize(model: nn.Module, batches: Iterable[Batch], objective: Objective, projector: Projector,
              optimizer_state: AdamState | None = None, **kwargs) -> np.ndarray:
    """All features ``[N, k]`` float32, rows in batch order; see :func:`iter_features`."""
    parts = list(iter_features(model, batches, objective, projector, optimizer_state, **kwargs))
    return np.concatenate(parts) if parts else np.zeros((0, projector.k), dtype=np.float32)
