"""Validation (and training) objectives: one loss per *item*, so one gradient vector per item.

METHODS.md defines three objectives whose gradients become feature vectors:

* SFT (§0 stage 2, §1 LESS): mean token cross-entropy over response tokens.
* DPO (§2 ROSE): ``L = -log σ(β (h(y_w) - h(y_l)))`` with ``h(y) = log πθ(y|x) - log πref(y|x)``.
* Policy gradient (§3 NICE): ``v(x) = Σ_j r_j ∇[-log πθ(y_j|x)]``.

Layout. A :class:`Batch` holds *rows* (token sequences) and maps every row to an *item* with
``item_index``; an item's gradient is the sum of its rows' gradients. This works because rows
never interact inside the model (attention stays inside a row), so ``loss.sum().backward()``
gives each row an output-gradient that only its own item's loss produced. ``row_weight`` is a
per-row coefficient whose meaning the objective defines: DPO uses +1 (chosen) and -1
(rejected); the policy gradient uses the reward ``r_j``; SFT ignores it. Build items with
:func:`sft_item`, :func:`pair_item`, :func:`sampled_item` and merge them with :func:`collate`
(right padding). Everything here takes tensors: tokenisation and chat formatting live elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100  # label of a token that is not part of the response (HF convention)


@dataclass
class Batch:
    """Rows of token ids grouped into items.

    Shapes: ``input_ids``, ``attention_mask``, ``labels``: ``[R, T]``; ``item_index``: ``[R]``
    (values in ``0..n_items-1``); ``row_weight``: ``[R]`` or None. ``labels`` is -100 on
    every token that is not scored (prompt, padding).
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    item_index: Tensor
    n_items: int
    row_weight: Tensor | None = None
    # Whether row r is item r (the usual case): decided on the host when the batch is built and
    # carried by `to`, so the per-layer gradient hooks never wait for the GPU to answer.
    rows_are_items: bool | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        rows = self.input_ids.shape[0]
        if self.input_ids.dim() != 2 or self.attention_mask.shape != self.input_ids.shape:
            raise ValueError("input_ids and attention_mask must both be [rows, length]")
        if self.labels.shape != self.input_ids.shape:
            raise ValueError("labels must have the shape of input_ids")
        if self.item_index.shape != (rows,):
            raise ValueError("item_index must hold one item number per row")
        if self.row_weight is not None and self.row_weight.shape != (rows,):
            raise ValueError("row_weight must hold one number per row")
        if self.rows_are_items is None or self.item_index.device.type == "cpu":  # cheap there: always
            self.rows_are_items = rows == self.n_items and bool(
                torch.equal(self.item_index.cpu(), torch.arange(rows)))

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def to(self, device: torch.device | str) -> Batch:
        """Copy to ``device`` (the per-sample machinery indexes on the model's device)."""
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(self, input_ids=move(self.input_ids), attention_mask=move(self.attention_mask),
                       labels=move(self.labels), item_index=move(self.item_index),
                       row_weight=move(self.row_weight))

    def split(self) -> list[Batch]:
        """One single-item batch per item, trailing padding trimmed (the batch-size-1 way)."""
        out = []
        for i in range(self.n_items):
            rows = (self.item_index == i).nonzero().squeeze(1)
            used = self.attention_mask[rows].any(0).nonzero()
            end = int(used.max()) + 1 if used.numel() else 1
            weight = None if self.row_weight is None else self.row_weight[rows]
            out.append(Batch(self.input_ids[rows, :end], self.attention_mask[rows, :end],
                             self.labels[rows, :end], torch.zeros_like(rows), 1, weight))
        return out


def _rows_item(rows: Sequence[tuple[Tensor, Tensor]], weights: Sequence[float] | None) -> Batch:
    """One item made of unpadded ``(input_ids[T], labels[T])`` rows."""
    merged = collate([_one_row(ids, labels) for ids, labels in rows])
    weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    return replace(merged, item_index=torch.zeros_like(merged.item_index), n_items=1, row_weight=weight)


def _one_row(input_ids: Tensor, labels: Tensor) -> Batch:
    if input_ids.dim() != 1 or labels.shape != input_ids.shape:
        raise ValueError("a row is a 1-D input_ids tensor and labels of the same length")
    ones = torch.ones_like(input_ids)
    return Batch(input_ids[None], ones[None], labels[None], torch.zeros(1, dtype=torch.long), 1)


def sft_item(input_ids: Tensor, labels: Tensor) -> Batch:
    """An SFT item (LESS train side or validation side): one sequence."""
    return _rows_item([(input_ids, labels)], None)


def pair_item(chosen: tuple[Tensor, Tensor], rejected: tuple[Tensor, Tensor]) -> Batch:
    """A preference pair (x, y_w, y_l): two rows, ``row_weight`` +1 for chosen, -1 for rejected."""
    return _rows_item([chosen, rejected], [1.0, -1.0])


def sampled_item(sequences: Sequence[tuple[Tensor, Tensor]], rewards: Sequence[float]) -> Batch:
    """A NICE item: M sampled responses to one prompt with their rewards ``r_j``."""
    if len(sequences) != len(rewards) or not sequences:
        raise ValueError("need one reward per sampled sequence, and at least one sequence")
    return _rows_item(sequences, rewards)


def collate(items: Sequence[Batch], pad_id: int = 0, length: int | None = None) -> Batch:
    """Merge batches into one: rows stacked, right-padded (to ``length`` if given), item
    numbers offset.

    Right padding keeps every real token at the position it has unpadded; padding gets
    ``attention_mask`` 0 and label -100, so it neither is attended to nor scored.
    """
    if not items:
        raise ValueError("nothing to collate")
    longest = max(b.input_ids.shape[1] for b in items)
    if length is not None and length < longest:
        raise ValueError(f"cannot pad rows of {longest} tokens to {length}")
    length = longest if length is None else length

    def pad(t: Tensor, value: int) -> Tensor:
        return F.pad(t, (0, length - t.shape[1]), value=value)

    offsets = torch.tensor([0] + [b.n_items for b in items[:-1]]).cumsum(0)
    weights = [b.row_weight for b in items]
    if any(w is None for w in weights) and not all(w is None for w in weights):
        raise ValueError("either every item has row weights or none has")
    return Batch(
        input_ids=torch.cat([pad(b.input_ids, pad_id) for b in items]),
        attention_mask=torch.cat([pad(b.attention_mask, 0) for b in items]),
        labels=torch.cat([pad(b.labels, IGNORE_INDEX) for b in items]),
        item_index=torch.cat([b.item_index + int(o) for b, o in zip(items, offsets)]),
        n_items=sum(b.n_items for b in items),
        row_weight=None if weights[0] is None else torch.cat(weights),
    )


def token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probabilities of the response tokens, and their count: ``([R], [R])``.

    Shift by one (the logit at position t predicts token t+1); only tokens whose label is not
    -100 count. ``position_ids`` count only attended tokens, so a right-padded row (see
    :func:`collate`) is computed exactly as the same row unpadded. Only the scored positions
    are upcast to float32 before the log-softmax, which keeps memory near the model's logits.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids, use_cache=False).logits
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    picked = logits[:, :-1][scored]
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
    logp = picked.log_softmax(-1).gather(-1, targets[scored][:, None]).squeeze(-1)
    rows = scored.nonzero()[:, 0]
    sum_logp = logp.new_zeros(input_ids.shape[0]).index_add(0, rows, logp)
    return sum_logp, scored.sum(-1)


def sum_per_item(values: Tensor, batch: Batch) -> Tensor:
    """``[R] -> [n_items]``: add each row's value into its item."""
    return values.new_zeros(batch.n_items).index_add(0, batch.item_index, values)


class Objective(ABC):
    """A loss per item whose gradient is the item's feature (before projection).

    ``loss(model, batch)`` returns ``[n_items]``; ``loss.sum().backward()`` then yields, per
    item, exactly the gradient of that item's loss, which the per-sample machinery separates.
    Implementations must run the model with gradients enabled at most once per batch.
    """

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Objective]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # abstract intermediates without a name stay unregistered
            Objective.registry[cls.name] = cls

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """One scalar loss per item, shape ``[batch.n_items]``."""

    def spec(self) -> dict[str, Any]:
        """What the run manifest records; :meth:`from_spec` rebuilds the same objective."""
        return {"name": self.name, **self._params()}

    def _params(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def from_spec(spec: dict[str, Any]) -> Objective:
        params = {k: v for k, v in spec.items() if k != "name"}
        try:
            return Objective.registry[spec["name"]](**params)
        except KeyError as err:
            raise ValueError(f"unknown objective {spec.get('name')!r}") from err


class SFTObjective(Objective):
    """Mean token cross-entropy over the response tokens of each item (METHODS.md §0, §1)."""

    name = "sft"

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        sum_logp, n_tokens = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels)
        return sum_per_item(-sum_logp / n_tokens.clamp(min=1), batch)


class LogProbObjective(Objective):
    """Minus the summed log-probability of each item's response tokens: ``∇`` of it is
    ``-∇log πθ(y|x)``, the part of ROSE's DPO gradient that one side of a pair gives (§2)."""

    name = "logp"

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        sum_logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels)
        return sum_per_item(-sum_logp, batch)


class DPOObjective(Objective):
    """Pairwise preference loss (METHODS.md §2): ``L = -log σ(β (h(y_w) - h(y_l)))``.

    π_ref is the same PEFT model with its adapter disabled, so no second copy of the weights
    is needed; its log-probs are computed without gradient.
    """

    name = "dpo"

    def __init__(self, beta: float = 0.1, per_token: bool = False):
        self.beta, self.per_token = float(beta), bool(per_token)

    def _params(self) -> dict[str, Any]:
        return {"beta": self.beta, **({"per_token": True} if self.per_token else {})}

    def implicit_rewards(self, model: nn.Module, batch: Batch) -> Tensor:
        """``h(y) = log πθ(y|x) - log πref(y|x)`` per row (summed log-probs); grad flows via πθ."""
        if not hasattr(model, "disable_adapter"):
            raise TypeError("DPO needs a PEFT model: the reference is the adapter-disabled model")
        args = (batch.input_ids, batch.attention_mask, batch.labels)
        with torch.no_grad(), model.disable_adapter():
            ref_logp, _ = token_logprobs(model, *args)
        policy_logp, count = token_logprobs(model, *args)
        h = policy_logp - ref_logp
        # per_token: mean instead of summed log-probs (a length-normalised variant; METHODS.md
        # specifies sums). Only the ratio of the two sides' lengths changes the direction.
        return h / count.clamp(min=1).to(h.dtype) if self.per_token else h

    def margin(self, model: nn.Module, batch: Batch) -> Tensor:
        """``h(y_w) - h(y_l)`` per pair, ``[n_items]``."""
        self._check_pairs(batch)
        h = self.implicit_rewards(model, batch)
        return sum_per_item(batch.row_weight.to(h.dtype) * h, batch)

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return -F.logsigmoid(self.beta * self.margin(model, batch))

    def grad_coefficient(self, margin: Tensor) -> Tensor:
        """``c`` in ``∇L = c · (∇log πθ(y_w|x) - ∇log πθ(y_l|x))``: ``c = -β σ(β (h_l - h_w))``."""
        return -self.beta * torch.sigmoid(-self.beta * margin)

    @staticmethod
    def _check_pairs(batch: Batch) -> None:
        w = batch.row_weight
        if w is None:
            raise ValueError("a DPO batch needs row_weight: +1 chosen, -1 rejected (see pair_item)")
        for sign in (1.0, -1.0):
            count = sum_per_item((w == sign).double(), batch)
            if not torch.all(count == 1):
                raise ValueError("every DPO item needs exactly one chosen (+1) and one rejected (-1) row")


class PolicyGradientObjective(Objective):
    """NICE's policy-gradient objective (METHODS.md §3): ``loss = Σ_j w_j · NLL(y_j|x)``.

    NLL is the summed token negative log-likelihood, so the gradient is ``v(x)``. Weights:
    ``"sum"``: ``w_j = r_j`` (no baseline, no averaging, the paper's formula);
    ``"rejection"``: keep ``r_j > 0`` and average, ``w_j = r_j / K``;
    ``"topk"``: keep the ``top_k`` highest rewards and average, ``w_j = r_j / K``.
    The reference code's variants "average the kept gradients"; we read the kept gradient as
    ``r_j ∇NLL_j`` (identical to plain averaging for 0/1 rewards). Sampling happens elsewhere.
    """

    name = "policy_gradient"
    variants = ("sum", "rejection", "topk")

    def __init__(self, variant: str = "sum", top_k: int = 10):
        if variant not in self.variants:
            raise ValueError(f"variant must be one of {self.variants}, not {variant!r}")
        self.variant, self.top_k = variant, int(top_k)

    def _params(self) -> dict[str, Any]:
        return {"variant": self.variant, "top_k": self.top_k}

    def row_weights(self, batch: Batch) -> Tensor:
        """``w_j`` per row from the rewards in ``batch.row_weight``."""
        if batch.row_weight is None:
            raise ValueError("a policy-gradient batch needs the rewards in row_weight")
        r = batch.row_weight.double()
        if self.variant == "sum":
            return r
        keep = torch.zeros_like(r, dtype=torch.bool)
        for i in range(batch.n_items):
            rows = (batch.item_index == i).nonzero().squeeze(1)
            if self.variant == "rejection":
                keep[rows[r[rows] > 0]] = True
            else:
                order = r[rows].argsort(descending=True, stable=True)
                keep[rows[order[: self.top_k]]] = True
        kept = sum_per_item(keep.double(), batch).clamp(min=1)
        return torch.where(keep, r / kept[batch.item_index], torch.zeros_like(r))

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        sum_logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels)
        weights = self.row_weights(batch).to(sum_logp.dtype)
        return sum_per_item(-weights * sum_logp, batch)
