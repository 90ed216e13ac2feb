"""FlexiCubes extraction against TRELLIS's output on the parity fixture, plus geometric sanity checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from cupid.representations.mesh import MeshExtractResult, feature_channels, flexicubes_mesh
from tests.conftest import PARITY

FIXTURE = PARITY / "slat_dec_mesh.io.safetensors"
RES = 64  # the fixture decoder's resolution 16, ×4 after two subdivisions


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not FIXTURE.is_file():
        pytest.fail(f"missing fixture {FIXTURE}")
    return load_file(str(FIXTURE))


def _canonical_faces(faces: np.ndarray) -> np.ndarray:
    """Faces rotated so the smallest index comes first (keeps the winding), rows sorted."""
    faces = np.asarray(faces, dtype=np.int64)
    k = np.argmin(faces, axis=1)
    idx = (k[:, None] + np.arange(3)[None, :]) % 3
    rot = np.take_along_axis(faces, idx, axis=1)
    return rot[np.lexsort(rot.T[::-1])]


def assert_same_mesh(got: MeshExtractResult, verts: torch.Tensor, faces: torch.Tensor,
                     attrs: torch.Tensor | None, tol: float = 1e-4) -> None:
    """Meshes equal as sets: vertex bijection within tol, identical oriented faces, attrs per vertex."""
    gv = got.vertices.detach().numpy().astype(np.float64)
    rv = verts.numpy().astype(np.float64)
    assert gv.shape == rv.shape, f"vertex count {gv.shape[0]} != reference {rv.shape[0]}"
    dist, match = cKDTree(gv).query(rv)                 # reference vertex i -> our vertex match[i]
    assert dist.max() <= tol, f"vertex mismatch {dist.max():.3g}"
    assert len(np.unique(match)) == len(match), "vertex matching is not one-to-one"
    assert got.faces.shape == faces.shape, f"face count {got.faces.shape[0]} != reference {faces.shape[0]}"
    ref_faces = match[faces.numpy().astype(np.int64)]
    assert np.array_equal(_canonical_faces(got.faces.numpy()), _canonical_faces(ref_faces)), "faces differ"
    if attrs is None:
        assert got.vertex_attrs is None
    else:
        err = np.abs(got.vertex_attrs.detach().numpy()[match] - attrs.numpy()).max()
        assert err <= tol, f"vertex attrs mismatch {err:.3g}"


@pytest.mark.parametrize("item", [0, 1])
def test_matches_trellis_fixture(io, item):
    rows = io["out_coords"][:, 0] == item
    mesh = flexicubes_mesh(io["out_coords"][rows, 1:], io["out_feats"][rows], RES, use_color=True)
    assert mesh.success
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.long
    assert_same_mesh(mesh, io[f"mesh{item}_vertices"], io[f"mesh{item}_faces"], io[f"mesh{item}_vertex_attrs"])


def test_row_order_does_not_matter(io):
    rows = (io["out_coords"][:, 0] == 1).nonzero().squeeze(1)
    perm = rows[torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))]
    mesh = flexicubes_mesh(io["out_coords"][perm, 1:], io["out_feats"][perm], RES)
    assert_same_mesh(mesh, io["mesh1_vertices"], io["mesh1_faces"], io["mesh1_vertex_attrs"])


def _sphere_input(res: int, radius: float, use_color: bool, seed: int = 0):
    """A solid ball of active cubes (untouched corners count as outside) with exact corner SDF, random rest."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centre = (idx.float() + 0.5) / res - 0.5
    coords = idx[centre.norm(dim=1) < radius + 2.0 / res]
    corners = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])
    pts = (coords[:, None, :] + corners[None]).float() / res - 0.5
    sdf = pts.norm(dim=-1) - radius + 1.0 / res              # the extractor subtracts a bias of one voxel
    m = coords.shape[0]
    parts = [sdf, 0.1 * torch.randn(m, 24, generator=g), torch.randn(m, 21, generator=g)]
    if use_color:
        parts.append(torch.randn(m, 48, generator=g))
    return coords.int(), torch.cat(parts, 1)


@pytest.mark.parametrize("use_color", [True, False])
def test_sphere_is_closed_and_outward(use_color):
    res, radius = 32, 0.3
    coords, feats = _sphere_input(res, radius, use_color)
    assert feats.shape[1] == feature_channels(use_color)
    mesh = flexicubes_mesh(coords, feats, res, use_color=use_color)
    assert mesh.success
    r = mesh.vertices.norm(dim=1)
    assert (r - radius).abs().max() < 1.0 / res               # deformation moves at most half a voxel
    # closed surface: every undirected edge is shared by exactly two faces, with opposite directions
    f = mesh.faces
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    assert torch.unique(directed, dim=0).shape[0] == directed.shape[0]
    undirected = torch.unique(torch.sort(directed, dim=1).values, dim=0, return_counts=True)[1]
    assert bool((undirected == 2).all())
    # outward winding (towards positive SDF): the signed volume is the ball's, not its negative
    p0, p1, p2 = (mesh.vertices[f[:, i]].double() for i in range(3))
    volume = float((p0 * torch.cross(p1, p2, dim=1)).sum()) / 6
    assert volume == pytest.approx(4 / 3 * np.pi * radius ** 3, rel=0.03)
    centroid = mesh.vertices[f].mean(1)
    assert float(((mesh.face_normals * centroid).sum(1) > 0).float().mean()) > 0.95
    v, e, n_f = mesh.vertices.shape[0], undirected.shape[0], f.shape[0]
    assert v - e + n_f == 2                                   # a sphere: Euler characteristic 2
    if use_color:
        assert mesh.vertex_attrs.shape == (v, 6)
        assert float(mesh.vertex_attrs.min()) > 0 and float(mesh.vertex_attrs.max()) < 1
    else:
        assert mesh.vertex_attrs is None


def test_no_surface_gives_empty_mesh():
    coords = torch.tensor([[3, 4, 5], [3, 4, 6]], dtype=torch.int32)
    feats = torch.zeros(2, 101)
    feats[:, :8] = 1.0                                        # all corners outside
    mesh = flexicubes_mesh(coords, feats, 16)
    assert not mesh.success and mesh.vertices.shape == (0, 3) and mesh.vertex_attrs.shape == (0, 6)
    empty = flexicubes_mesh(torch.zeros((0, 3), dtype=torch.int32), torch.zeros((0, 53)), 16, use_color=False)
    assert not empty.success and empty.vertex_attrs is None


@pytest.mark.parametrize("coords, feats, match", [
    (torch.zeros((2, 4), dtype=torch.int32), torch.zeros(2, 101), "coords must be"),
    (torch.zeros((2, 3), dtype=torch.int32), torch.zeros(2, 53), r"feats must be \[2, 101\]"),
    (torch.tensor([[0, 0, 16]], dtype=torch.int32), torch.zeros(1, 101), r"\[0, 16\)"),
    (torch.tensor([[1, 2, 3], [1, 2, 3]], dtype=torch.int32), torch.zeros(2, 101), "duplicate"),
])
def test_bad_input_is_rejected(coords, feats, match):
    feats = feats.clone()
    feats[:, 0] = -1.0                                       # one inside corner: a surface exists
    with pytest.raises(ValueError, match=match):
        flexicubes_mesh(coords, feats, 16)
