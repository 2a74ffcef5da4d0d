"""Projections: linear, seeded, identical across processes, JL-accurate, exact layer by layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curation.engine.projection import DenseRademacherProjector, Projector, SparseJLProjector, derive_seed

REPO = Path(__file__).resolve().parents[1]
PROJECTORS = {
    "countsketch": lambda k=256, seed=3: SparseJLProjector(k, seed),
    "sparse_jl_s4": lambda k=256, seed=3: SparseJLProjector(k, seed, s=4, block_size=100),
    "dense": lambda k=256, seed=3: DenseRademacherProjector(k, seed, block_size=100),
}


@pytest.fixture(params=sorted(PROJECTORS))
def make(request):
    return PROJECTORS[request.param]


def explicit_matrix(projector: Projector, name: str, d: int) -> torch.Tensor:
    """The ``d × k`` matrix a projector applies to layer ``name`` (its image of the identity)."""
    return projector.project(name, torch.eye(d, dtype=torch.float64))


def test_linear(make):
    p, gen = make(), torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 250, generator=gen, dtype=torch.float64)
    a, b = 1.7, -0.3
    assert torch.allclose(p.project("w", a * x + b * y), a * p.project("w", x) + b * p.project("w", y))


def test_deterministic_and_rebuilt_from_spec(make):
    x = torch.randn(2, 250, dtype=torch.float64)
    first, second = make(), make()
    rebuilt = Projector.from_spec(first.spec())
    assert rebuilt.spec() == first.spec()
    assert torch.equal(first.project("w", x), second.project("w", x))
    assert torch.equal(first.project("w", x), rebuilt.project("w", x))
    assert not torch.allclose(first.project("w", x), first.project("other", x)), "layers need their own rows"
    assert not torch.allclose(first.project("w", x), make(seed=4).project("w", x))


def test_spec_of_another_version_is_refused():
    spec = SparseJLProjector(8, 0).spec()
    with pytest.raises(ValueError, match="version"):
        Projector.from_spec({**spec, "version": 999})
    with pytest.raises(ValueError, match="unknown"):
        Projector.from_spec({**spec, "type": "nope"})


def test_identical_in_a_second_process(tmp_path):
    """Same bytes from a fresh interpreter: nothing depends on process state or hash salt."""
    specs = [make().spec() for make in PROJECTORS.values()]
    name, x = "layers.0.q_proj.lora_A.default.weight", torch.linspace(-1, 1, 500).reshape(2, 250)
    here = b"".join(Projector.from_spec(spec).project(name, x).numpy().tobytes() for spec in specs)
    code = (
        "import sys, torch; from curation.engine.projection import Projector;"
        "x = torch.linspace(-1, 1, 500).reshape(2, 250);"
        f"out = b''.join(Projector.from_spec(s).project({name!r}, x).numpy().tobytes() for s in {specs!r});"
        "open(sys.argv[1], 'wb').write(out)"
    )
    out = tmp_path / "projected.bin"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=REPO, timeout=120)
    assert out.read_bytes() == here


def test_seeds_and_matrices_do_not_drift():
    """Golden values: a change of hashing or of torch's CPU generator would silently change
    every projection of every saved run; SPEC_VERSION must be bumped if this test has to change."""
    assert derive_seed("a", 1) == 6962120981034877120
    x = torch.arange(1.0, 6.0, dtype=torch.float64)[None]
    sparse = SparseJLProjector(16, seed=7).project("layer", x)[0]
    assert {i: v for i, v in enumerate(sparse.tolist()) if v} == {8: -1.0, 13: 2.0, 14: -2.0}
    dense = DenseRademacherProjector(4, seed=7, block_size=2).project("layer", x)[0]
    assert dense.tolist() == [3.5, 7.5, -1.5, 4.5]


@pytest.mark.parametrize("projector", [SparseJLProjector(2048, 11), SparseJLProjector(2048, 11, s=4),
                                       DenseRademacherProjector(2048, 11, block_size=512)])
def test_preserves_cosines(projector):
    """JL at k=2048: cosines of random vectors survive with error ~ 1/sqrt(k) ≈ 0.02."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(1, 3000, generator=gen, dtype=torch.float64)
    x = base + torch.randn(40, 3000, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, 40)[:, None]
    exact = torch.nn.functional.normalize(x, dim=1)
    projected = torch.nn.functional.normalize(projector.project("w", x), dim=1)
    error = (projected @ projected.T - exact @ exact.T).abs()
    assert error.max() < 0.1 and error.mean() < 0.03


def test_per_layer_sum_is_the_projection_of_the_concatenation(make):
    """Pᵀ[g_1; g_2] = P_1ᵀg_1 + P_2ᵀg_2 for the stacked matrix P = [P_1; P_2], and E[PᵀP] = I:
    every column of the stacked matrix (one per coordinate) has unit norm."""
    p, dims = make(), {"a": 120, "b": 250}
    stacked = torch.cat([explicit_matrix(p, name, d) for name, d in dims.items()])
    g = torch.randn(3, sum(dims.values()), dtype=torch.float64)
    per_layer = p.project("a", g[:, :120]) + p.project("b", g[:, 120:])
    assert torch.allclose(per_layer, g @ stacked)
    assert torch.allclose(stacked.norm(dim=1), torch.ones(stacked.shape[0], dtype=torch.float64))


def test_sparse_jl_uses_one_bucket_per_slice():
    p = SparseJLProjector(32, 0, s=4)
    matrix = explicit_matrix(p, "w", 50).reshape(50, 4, 8)  # 4 slices of 8 buckets
    assert torch.equal((matrix != 0).sum(-1), torch.ones(50, 4, dtype=torch.long))
    assert torch.allclose(matrix.abs().sum(-1), torch.full((50, 4), 0.5, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_matrix_on_gpu(make):
    p, x = make(), torch.randn(4, 250, dtype=torch.float64)
    assert torch.allclose(p.project("w", x.cuda()).cpu(), p.project("w", x), rtol=1e-12, atol=1e-12)
