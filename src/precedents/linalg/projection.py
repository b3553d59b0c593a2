r"""Seeded random projections ``R^p -> R^k`` applied in chunks (Johnson-Lindenstrauss), in plain torch.

``RandomProjection(p, k, seed)`` represents a fixed p x k matrix P with independent entries, ``N(0, 1) / sqrt(k)``
(``kind="gaussian"``) or ``+-1 / sqrt(k)`` with equal probability (``kind="rademacher"``), so that
``E ||g P||^2 = ||g||^2`` and inner products are preserved up to ``O(||g|| ||h|| / sqrt(k))``. ``project(G)``
returns ``G P`` for a batch of rows G (b, p). P is generated in row chunks of ``chunk_size`` rows, chunk j from
a CPU generator seeded with ``(seed, j)``, so the numbers depend only on (p, k, seed, kind, chunk_size) and not on
the device; chunks are kept on the device, in the dtype of the projected rows, while they fit in ``cache_bytes``
(1 GiB by default) and are regenerated otherwise, so memory stays bounded by one chunk plus the cache.
"""

from __future__ import annotations

import math

import torch

from .._validation import PrecedentsError

KINDS = ("rademacher", "gaussian")


class RandomProjection:
    """A seeded p x k random projection, applied chunk by chunk (see the module docstring)."""

    def __init__(self, n_features: int, dim: int, *, seed: int = 0, kind: str = "rademacher",
                 chunk_size: int = 16384, cache_bytes: int = 1 << 30) -> None:
        if kind not in KINDS:
            raise PrecedentsError(f"projection kind must be one of {', '.join(KINDS)}, got {kind!r}.")
        if dim < 1 or n_features < 1:
            raise PrecedentsError(f"projection sizes must be >= 1, got p={n_features}, k={dim}.")
        self.n_features, self.dim, self.seed, self.kind = int(n_features), int(dim), int(seed), kind
        self.chunk_size = int(chunk_size)
        self.cache_bytes = int(cache_bytes)
        self.scale = 1.0 / math.sqrt(self.dim)
        self._cache: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_features / self.chunk_size)

    def _generate(self, j: int) -> torch.Tensor:
        rows = min(self.chunk_size, self.n_features - j * self.chunk_size)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + j)
        if self.kind == "rademacher":
            return (torch.randint(0, 2, (rows, self.dim), generator=g, dtype=torch.int8) * 2 - 1).to(torch.int8)
        return torch.randn(rows, self.dim, generator=g, dtype=torch.float32)

    def chunk(self, j: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``[j * chunk_size, (j + 1) * chunk_size)`` of P (unscaled: +-1 or N(0, 1)) on ``device``, kept
        (in ``dtype``) while the cache has room."""
        key = (j, str(device), dtype)
        block = self._cache.get(key)
        if block is None:
            block = self._generate(j).to(device=device, dtype=dtype)
            used = sum(t.numel() * t.element_size() for t in self._cache.values())
            if used + block.numel() * block.element_size() <= self.cache_bytes:
                self._cache[key] = block
        return block

    def project(self, G: torch.Tensor) -> torch.Tensor:
        """``G P`` (b, k) for rows G (b, p), computed in G's dtype (float32 or float64) on G's device."""
        if G.shape[-1] != self.n_features:
            raise PrecedentsError(f"The projection maps {self.n_features} features; got rows of {G.shape[-1]}.")
        dtype = G.dtype if G.is_floating_point() else torch.float32
        out = torch.zeros(*G.shape[:-1], self.dim, dtype=dtype, device=G.device)
        for j in range(self.n_chunks):
            s = j * self.chunk_size
            out += G[..., s:s + self.chunk_size].to(dtype) @ self.chunk(j, G.device, dtype)
        return out * self.scale

    def matrix(self) -> torch.Tensor:
        """The whole P (p, k) in float64 on the CPU (for tests and small p)."""
        return torch.cat([self._generate(j).to(torch.float64) for j in range(self.n_chunks)]) * self.scale


class KroneckerProjection:
    r"""A structured projection of the gradients of nn.Linear / nn.Conv2d layers (LoGra-style; Choe et al. 2024).

    A layer's per-example gradient is ``G = sum_t delta_t a_t^T`` (out x in, see :mod:`precedents.linalg.kfac`).
    Layer l gets ``k_l ~ dim * p_l / p`` of the ``dim`` features, as ``k_o x k_i`` with ``k_o = min(out,
    ceil(sqrt(k_l)))`` and ``k_i = min(in, ceil(k_l / k_o))``, and its features are

        vec(P_o^T G P_i) = sum_t (P_o^T delta_t) (x) (P_i^T a_t),

    ``P_o`` (out x k_o) and ``P_i`` (in x k_i) seeded random projections (:class:`RandomProjection`), so
    ``E ||features||^2 = ||G||^2`` and the cost is ``O(out k_o + in k_i + k_o k_i)`` per example and location
    instead of ``O(out in dim)``: the p-dimensional gradient is never formed. The total dimension is about
    ``dim`` (``self.dim`` says exactly).
    """

    def __init__(self, shapes: list[tuple[int, int]], dim: int, *, seed: int = 0, kind: str = "rademacher") -> None:
        if not shapes:
            raise PrecedentsError("KroneckerProjection needs at least one (out, in) layer shape.")
        total = sum(o * i for o, i in shapes)
        self.factors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.dims: list[int] = []
        for index, (out_dim, in_dim) in enumerate(shapes):
            k_l = max(1, round(dim * out_dim * in_dim / total))
            k_o = min(out_dim, math.ceil(math.sqrt(k_l)))
            k_i = min(in_dim, math.ceil(k_l / k_o))
            p_o = RandomProjection(out_dim, k_o, seed=seed * 1_000_003 + 2 * index, kind=kind).matrix()
            p_i = RandomProjection(in_dim, k_i, seed=seed * 1_000_003 + 2 * index + 1, kind=kind).matrix()
            self.factors.append((p_o, p_i))
            self.dims.append(k_o * k_i)
        self.dim = sum(self.dims)

    def project_layer(self, index: int, deltas: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Features (b, k_o k_i) of layer ``index`` from its output gradients (b, T, out) and inputs (b, T, in)."""
        p_o, p_i = self.factors[index]
        u = deltas @ p_o.to(deltas.device, deltas.dtype)                  # (b, T, k_o)
        v = inputs @ p_i.to(inputs.device, inputs.dtype)                  # (b, T, k_i)
        return torch.einsum("bto,bti->boi", u, v).reshape(len(u), -1)
