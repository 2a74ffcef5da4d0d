"""Seeded random projections of per-layer gradients to ``k`` dimensions (METHODS.md §0 stage 2).

Why per layer. The full gradient is the concatenation ``g = [g_1; ...; g_L]`` of the LoRA
parameters' gradients. Every projector here generates the rows of its ``d × k`` matrix
``P = [P_1; ...; P_L]`` per layer (and per block of coordinates) from seeds derived from
``(seed, layer name, block)``. The row blocks of ``P`` multiply the matching blocks of ``g``,
so ``Pᵀg = Σ_l P_lᵀ g_l`` exactly: projecting layer by layer and summing *is* the projection of
the concatenated gradient, and no layer's gradient ever needs to meet another's. Rows are
independent across layers, so the stacked matrix has the same distribution as one big JL
matrix. The seeds come from ``hashlib`` (never Python's salted ``hash()``) and random numbers
from a CPU ``torch.Generator``, so the matrix is identical in every process and on every device
(on a GPU, atomic adds may order the float sums differently: results agree to rounding).

Both projectors satisfy ``E[<Px, Py>] = <x, y>``, so projected cosines estimate true cosines
with error ~ ``1/sqrt(k)``. Train and validation features of one run must use the same
projector ``spec()``; it goes into the run manifest and :meth:`Projector.from_spec` rebuilds it.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

SPEC_VERSION = 1  # bump when the same spec would produce a different matrix


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from ``parts`` (same value in every process and platform)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


class Projector(ABC):
    """Projects ``[B, d]`` per-layer vectors to ``[B, k]``; summing over layers is exact."""

    kind: ClassVar[str]
    registry: ClassVar[dict[str, type[Projector]]] = {}

    def __init__(self, k: int, seed: int):
        if k < 1:
            raise ValueError("k must be positive")
        self.k, self.seed = int(k), int(seed)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Projector.registry[cls.kind] = cls

    @abstractmethod
    def project(self, name: str, x: Tensor) -> Tensor:
        """Project ``x: [B, d]``, the coordinates of layer ``name``, to ``[B, k]`` on x's device."""

    def accumulate(self, name: str, x: Tensor, total: Tensor) -> None:
        """``total += project(name, x)``; a projector may do it without a ``[B, k]`` temporary."""
        total += self.project(name, x)

    def spec(self) -> dict[str, Any]:
        """Everything that determines the matrix: recorded in run manifests."""
        return {"type": self.kind, "k": self.k, "seed": self.seed, "version": SPEC_VERSION,
                **self._params()}

    def _params(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def from_spec(spec: dict[str, Any]) -> Projector:
        """Rebuild a projector from :meth:`spec`; refuses specs of another version."""
        spec = dict(spec)
        if spec.pop("version", SPEC_VERSION) != SPEC_VERSION:
            raise ValueError(f"projector spec version differs from {SPEC_VERSION}: {spec}")
        kind = spec.pop("type", None)
        if kind not in Projector.registry:
            raise ValueError(f"unknown projector type {kind!r}")
        return Projector.registry[kind](**spec)

    @staticmethod
    def _check(x: Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"project() takes [batch, d], got shape {tuple(x.shape)}")


class SparseJLProjector(Projector):
    """Sparse JL (Kane-Nelson block construction); ``s=1`` is CountSketch.

    Each input coordinate ``j`` lands in ``s`` output buckets, one inside each of the ``s``
    equal slices of ``[0, k)``, with a random sign and weight ``1/sqrt(s)``. Hence each column
    of ``P`` (one per coordinate) has unit norm and independent signs: ``E[PᵀP] = I``. Cost is
    ``O(B·d·s)`` with ``index_add_``; the only state is ``s`` bucket indices and signs per
    coordinate, cached per (layer, device), never a ``d × k`` matrix.
    """

    kind = "sparse_jl"

    def __init__(self, k: int, seed: int, s: int = 1, block_size: int = 1 << 20):
        super().__init__(k, seed)
        if s < 1 or k % s:
            raise ValueError(f"s must be a positive divisor of k (k={k}, s={s})")
        self.s, self.block_size = int(s), int(block_size)
        self._cache: dict[tuple[str, int, torch.device], tuple[Tensor, Tensor]] = {}

    def _params(self) -> dict[str, Any]:
        return {"s": self.s, "block_size": self.block_size}

    def _hash_block(self, name: str, block: int, n: int) -> tuple[Tensor, Tensor]:
        """Bucket indices ``[n, s]`` and signs ``[n, s]`` of coordinates in one block."""
        gen = _generator(self.kind, self.seed, name, block)
        width = self.k // self.s
        idx = torch.randint(0, width, (n, self.s), generator=gen) + torch.arange(self.s) * width
        signs = torch.randint(0, 2, (n, self.s), generator=gen, dtype=torch.int8) * 2 - 1
        return idx, signs

    def _plan(self, name: str, d: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (name, d, device)
        if key not in self._cache:
            blocks = [self._hash_block(name, b, min(self.block_size, d - start))
                      for b, start in enumerate(range(0, d, self.block_size))]
            idx = torch.cat([i for i, _ in blocks]).reshape(-1)
            signs = torch.cat([s for _, s in blocks]).reshape(d, self.s)
            self._cache[key] = (idx.to(device), signs.to(device))
        return self._cache[key]

    def project(self, name: str, x: Tensor) -> Tensor:
        self._check(x)
        idx, signs = self._plan(name, x.shape[1], x.device)
        values = x[:, :, None] * signs.to(x.dtype)  # [B, d, s]: coordinate j's s signed copies
        if self.s > 1:
            values = values / math.sqrt(self.s)
        return x.new_zeros(x.shape[0], self.k).index_add_(1, idx, values.reshape(x.shape[0], -1))


class DenseRademacherProjector(Projector):
    """Dense ``±1/sqrt(k)`` matrix, generated ``block_size`` rows at a time (the LESS/trak way).

    The reference: it draws ``d·k`` random signs per call (unless ``cache`` is set, which
    keeps them per layer and device) and costs a ``[B, d] × [d, k]`` matmul.
    """

    kind = "dense_rademacher"

    def __init__(self, k: int, seed: int, block_size: int = 4096, cache: bool = False):
        super().__init__(k, seed)
        self.block_size, self.cache = int(block_size), bool(cache)
        self._cache: dict[tuple[str, int, torch.device, torch.dtype], list[Tensor]] = {}

    def _params(self) -> dict[str, Any]:
        return {"block_size": self.block_size}

    def _block(self, name: str, block: int, n: int) -> Tensor:
        gen = _generator(self.kind, self.seed, name, block)
        return torch.randint(0, 2, (n, self.k), generator=gen, dtype=torch.int8) * 2 - 1

    def _blocks(self, name: str, d: int, device: torch.device, dtype: torch.dtype):
        key = (name, d, device, dtype)
        if key in self._cache:
            yield from self._cache[key]
            return
        kept = []
        for b, start in enumerate(range(0, d, self.block_size)):
            block = self._block(name, b, min(self.block_size, d - start)).to(device, dtype)
            block = block / math.sqrt(self.k)
            if self.cache:
                kept.append(block)
            yield block
        if self.cache:
            self._cache[key] = kept

    def project(self, name: str, x: Tensor) -> Tensor:
        self._check(x)
        out = x.new_zeros(x.shape[0], self.k)
        start = 0
        for block in self._blocks(name, x.shape[1], x.device, x.dtype):
            out += x[:, start:start + block.shape[0]] @ block
            start += block.shape[0]
        return out


class IdentityProjector(Projector):
    """No projection: the exact gradient, each layer at its own offset (``k = d``).

    For models whose LoRA gradient is small (the tiny demo model: d = 32,768), storing it
    whole costs little more than a sketch and removes the sketch's noise, which on the demo
    is as large as the cosines themselves (mean |cos| ~0.02 vs 1/sqrt(8192) = 0.011).
    ``layout`` lists ``(parameter name, numel)`` in a fixed order; it is part of the spec,
    so train and validation features of one run place every layer identically.
    """

    kind = "identity"

    def __init__(self, k: int, seed: int = 0, layout: tuple | list = ()):
        layout = tuple((str(n), int(d)) for n, d in layout)
        if sum(d for _, d in layout) != int(k):
            raise ValueError(f"identity projector: k={k} must equal the layout's total size")
        super().__init__(k, seed)
        self.layout = layout
        self.offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for name, d in layout:
            self.offsets[name] = (start, d)
            start += d

    def _params(self) -> dict[str, Any]:
        return {"layout": [list(x) for x in self.layout]}

    def project(self, name: str, x: Tensor) -> Tensor:
        self._check(x)
        if name not in self.offsets or self.offsets[name][1] != x.shape[1]:
            raise ValueError(f"identity projector: layer {name} (d={x.shape[1]}) is not in its layout")
        start, d = self.offsets[name]
        out = x.new_zeros(x.shape[0], self.k)
        out[:, start:start + d] = x
        return out

    def accumulate(self, name: str, x: Tensor, total: Tensor) -> None:
        start, d = self.offsets[name]
        if d != x.shape[1]:
            raise ValueError(f"identity projector: layer {name} has d={x.shape[1]}, its layout says {d}")
        total[:, start:start + d] += x

    def slices(self) -> list[tuple[str, slice]]:
        """Where each layer sits in a feature row: lets a stored exact row be projected later."""
        return [(name, slice(s, s + d)) for name, (s, d) in self.offsets.items()]
