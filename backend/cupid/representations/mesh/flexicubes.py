"""Sparse FlexiCubes extraction of the SLat mesh decoder's output (inference path), CPU-friendly.

The decoder predicts, for every active cube of a `res`³ grid, values at the cube's 8 corners (SDF,
deformation, optionally colour) and 21 per-cube FlexiCubes weights. TRELLIS averages the corner values
over all cubes sharing a grid vertex, scatters them into a dense (res+1)³ grid (SDF 1 = outside where no
cube wrote), and runs FlexiCubes on every cube of the dense grid. Only cubes with a corner inside the
surface (SDF < 0) can emit geometry, and such a corner must belong to an active cube, so everything
here is computed on sorted integer keys of the touched vertices, candidate cubes and crossing edges:
memory grows with the number of active cubes, not with res³. The output (vertex order included)
matches the dense computation.
"""
from __future__ import annotations

import torch

from .result import MeshExtractResult
from .tables import CUBE_CORNERS, CUBE_EDGES, ambiguity_table, dmc_edge_table

SDF_CHANNELS = 8
DEFORM_CHANNELS = 8 * 3
WEIGHT_CHANNELS = 21
COLOR_CHANNELS = 8 * 6
WEIGHT_SCALE = 0.99

_CPU = torch.device("cpu")  # explicit: this module may first be imported inside a meta-device context
_CORNERS = torch.tensor(CUBE_CORNERS, dtype=torch.long, device=_CPU)                # [8, 3]
_EDGE_A = torch.tensor([a for a, _ in CUBE_EDGES], dtype=torch.long, device=_CPU)   # [12] first corner of each edge
_EDGE_B = torch.tensor([b for _, b in CUBE_EDGES], dtype=torch.long, device=_CPU)   # [12] second corner
_DMC_EDGES, _NUM_DUAL = dmc_edge_table()
_AMBIGUOUS, _AMBIGUOUS_DIR = ambiguity_table()


def _dual_vertex_entries() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per case, the flattened (dual vertex j, edge e) pairs in table order, as a ragged array."""
    valid = _DMC_EDGES >= 0                                          # [256, 4, 7]
    count = valid.flatten(1).sum(1)                                  # [256]
    start = torch.cumsum(count, 0) - count
    case, j, _ = valid.nonzero(as_tuple=True)                        # row-major = table order
    return start, count, j, _DMC_EDGES[valid]


_ENTRY_START, _ENTRY_COUNT, _ENTRY_VD, _ENTRY_EDGE = _dual_vertex_entries()


def feature_channels(use_color: bool) -> int:
    """Channels per active cube the mesh decoder predicts: 101 with colour, 53 without."""
    return SDF_CHANNELS + DEFORM_CHANNELS + WEIGHT_CHANNELS + (COLOR_CHANNELS if use_color else 0)


def split_features(feats: torch.Tensor, use_color: bool) -> dict[str, torch.Tensor]:
    """Unpack decoder features [M, C] into sdf [M, 8], deform [M, 8, 3], weights [M, 21], color [M, 8, 6]."""
    m = feats.shape[0]
    out = {"sdf": feats[:, 0:8].reshape(m, 8), "deform": feats[:, 8:32].reshape(m, 8, 3),
           "weights": feats[:, 32:53]}
    if use_color:
        out["color"] = feats[:, 53:101].reshape(m, 8, 6)
    return out


def _lookup(sorted_keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Index of each query in `sorted_keys`, or -1 where absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(query, -1)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[pos] == query, pos, torch.full_like(pos, -1))


def _decode(keys: torch.Tensor, n: int) -> torch.Tensor:
    """Linear keys (x·n + y)·n + z -> [K, 3] integer coordinates."""
    return torch.stack([keys // (n * n), (keys // n) % n, keys % n], dim=1)


def _encode(xyz: torch.Tensor, n: int) -> torch.Tensor:
    return (xyz[..., 0] * n + xyz[..., 1]) * n + xyz[..., 2]


def _empty(n_attr: int | None, res: int, device: torch.device) -> MeshExtractResult:
    attrs = None if n_attr is None else torch.zeros((0, n_attr), device=device)
    return MeshExtractResult(torch.zeros((0, 3), device=device), torch.zeros((0, 3), dtype=torch.long, device=device),
                             attrs, res)


def _check_inputs(coords: torch.Tensor, feats: torch.Tensor, res: int, use_color: bool) -> None:
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [M, 3] (x, y, z), got {tuple(coords.shape)}")
    if coords.dtype.is_floating_point:
        raise ValueError("coords must be an integer tensor")
    want = feature_channels(use_color)
    if feats.dim() != 2 or feats.shape[0] != coords.shape[0] or feats.shape[1] != want:
        raise ValueError(f"feats must be [{coords.shape[0]}, {want}] for use_color={use_color}, "
                         f"got {tuple(feats.shape)}")
    if res < 1:
        raise ValueError(f"res must be positive, got {res}")
    if coords.numel() and (int(coords.min()) < 0 or int(coords.max()) >= res):
        raise ValueError(f"coords must lie in [0, {res}) for a {res}³ grid")


def _vertex_table(coords: torch.Tensor, per_corner: torch.Tensor, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-corner values [M, 8, A] over all active cubes sharing a grid vertex.

    Returns (sorted vertex keys [V] on the (res+1)³ grid, mean values [V, A]).
    """
    n = res + 1
    corner_off = _encode(_CORNERS.to(coords.device), n)                       # [8]
    keys = (_encode(coords, n)[:, None] + corner_off[None, :]).reshape(-1)
    vkeys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    del keys
    a = per_corner.shape[-1]
    sums = torch.zeros((vkeys.numel(), a), dtype=per_corner.dtype, device=per_corner.device)
    sums.index_add_(0, inverse, per_corner.reshape(-1, a))
    counts = torch.bincount(inverse, minlength=vkeys.numel()).to(per_corner.dtype)
    return vkeys, sums / counts[:, None]


def _surface_cubes(vkeys: torch.Tensor, vsdf: torch.Tensor, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubes of the res³ grid whose corners have both signs (sorted keys [S]) and their occupancy [S, 8]."""
    n = res + 1
    device = vkeys.device
    inside = _decode(vkeys[vsdf < 0], n)                                       # [I, 3]
    corners = _CORNERS.to(device)
    cand = (inside[:, None, :] - corners[None, :, :]).reshape(-1, 3)           # cubes touching an inside vertex
    ok = ((cand >= 0) & (cand < res)).all(1)
    cand = torch.unique(_encode(cand[ok], res), sorted=True)
    occ = _corner_sdf(cand, vkeys, vsdf, res) < 0                              # [K, 8]
    n_in = occ.sum(1)
    surf = (n_in > 0) & (n_in < 8)
    return cand[surf], occ[surf]


def _corner_keys(cube_keys: torch.Tensor, res: int) -> torch.Tensor:
    """[S] cube keys -> [S, 8] keys of their corner vertices on the (res+1)³ grid."""
    n = res + 1
    base = _encode(_decode(cube_keys, res), n)
    return base[:, None] + _encode(_CORNERS.to(cube_keys.device), n)[None, :]


def _corner_sdf(cube_keys: torch.Tensor, vkeys: torch.Tensor, vsdf: torch.Tensor, res: int) -> torch.Tensor:
    idx = _lookup(vkeys, _corner_keys(cube_keys, res))
    return torch.where(idx >= 0, vsdf[idx.clamp(min=0)], torch.ones((), dtype=vsdf.dtype, device=vsdf.device))


def _resolve_ambiguity(cube_keys: torch.Tensor, case: torch.Tensor, res: int) -> torch.Tensor:
    """Two face-adjacent cubes with ambiguous cases both switch to the complementary case (255 - case)."""
    device = case.device
    flagged = _AMBIGUOUS.to(device)[case]
    idx = flagged.nonzero().squeeze(1)
    if idx.numel() == 0:
        return case
    keys = cube_keys[idx]                                                      # sorted (subset of sorted)
    nb = _decode(keys, res) + _AMBIGUOUS_DIR.to(device)[case[idx]]
    inside = ((nb >= 0) & (nb < res)).all(1)
    hit = torch.zeros_like(inside)
    hit[inside] = _lookup(keys, _encode(nb[inside], res)) >= 0
    out = case.clone()
    out[idx[hit]] = 255 - case[idx[hit]]
    return out


def _cube_weights(coords: torch.Tensor, weights: torch.Tensor, cube_keys: torch.Tensor, res: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlexiCubes (beta [S, 12], alpha [S, 8], gamma [S]) of the surface cubes; raw 0 where no cube is active."""
    akeys = _encode(coords, res)
    akeys, order = torch.sort(akeys)
    if akeys.numel() > 1 and bool((akeys[1:] == akeys[:-1]).any()):
        raise ValueError("coords contain duplicate voxels")
    idx = _lookup(akeys, cube_keys)
    raw = torch.zeros((cube_keys.numel(), WEIGHT_CHANNELS), dtype=weights.dtype, device=weights.device)
    hit = idx >= 0
    raw[hit] = weights[order[idx[hit]]]
    beta = torch.tanh(raw[:, :12]) * WEIGHT_SCALE + 1
    alpha = torch.tanh(raw[:, 12:20]) * WEIGHT_SCALE + 1
    gamma = torch.sigmoid(raw[:, 20]) * WEIGHT_SCALE + (1 - WEIGHT_SCALE) / 2
    return beta, alpha, gamma


def _interp(w0: torch.Tensor, w1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Zero crossing of the line through weights (w0, w1) at points (x0, x1)."""
    return (x0 * w1 + x1 * -w0) / (w1 + -w0)


def flexicubes_mesh(coords: torch.Tensor, feats: torch.Tensor, res: int, use_color: bool = True
                    ) -> MeshExtractResult:
    """Mesh of one object from the SLat mesh decoder's raw output at its final resolution.

    coords: int [M, 3] (x, y, z) active cubes of the res³ grid; feats: [M, 101] (or [M, 53] without
    colour) = sdf 8 | deform 8·3 | weights 21 | color 8·6, corners in `CUBE_CORNERS` order.
    Vertices lie in [-0.5, 0.5]³; faces wind so their normals point to positive SDF (outside).
    """
    _check_inputs(coords, feats, res, use_color)
    device = feats.device
    n_attr = 6 if use_color else None
    if coords.shape[0] == 0:
        return _empty(n_attr, res, device)
    coords = coords.long()
    feats = feats.float()
    parts = split_features(feats, use_color)
    per_corner = [parts["sdf"][..., None] - 1.0 / res, parts["deform"]]
    if use_color:
        per_corner.append(parts["color"])
    vkeys, vattr = _vertex_table(coords, torch.cat(per_corner, dim=-1), res)
    del per_corner
    vsdf = vattr[:, 0].contiguous()

    cube_keys, occ = _surface_cubes(vkeys, vsdf, res)
    if cube_keys.numel() == 0:
        return _empty(n_attr, res, device)
    n_cubes = cube_keys.numel()
    case = (occ.long() << torch.arange(8, device=device)).sum(1)
    case = _resolve_ambiguity(cube_keys, case, res)
    beta, alpha, gamma = _cube_weights(coords, parts["weights"], cube_keys, res)

    # Crossing edges. A crossing edge makes every cube around it a surface cube, so counting its
    # occurrences among crossing slots counts the surface cubes that share it.
    n = res + 1
    ea, eb = _EDGE_A.to(device), _EDGE_B.to(device)
    ckeys = _corner_keys(cube_keys, res)                                         # [S, 8]
    crossing = occ[:, ea] != occ[:, eb]                                          # [S, 12]
    slot_keys = ckeys[:, ea][crossing] * (n ** 3) + ckeys[:, eb][crossing]
    del ckeys
    edge_keys, slot_edge, edge_count = torch.unique(slot_keys, sorted=True, return_inverse=True,
                                                    return_counts=True)
    del slot_keys
    edge_of_slot = torch.full((n_cubes, 12), -1, dtype=torch.long, device=device)
    edge_of_slot[crossing] = slot_edge

    # Edge end points (first end as the cube lists it, then second): SDF, deformed position, colour.
    ends = torch.stack([edge_keys // (n ** 3), edge_keys % (n ** 3)], dim=1)     # [E, 2]
    vidx = _lookup(vkeys, ends)
    found = vidx >= 0
    vidx = vidx.clamp(min=0)
    end_sdf = torch.where(found, vsdf[vidx], torch.ones((), device=device))      # [E, 2]
    deform = torch.where(found[..., None], vattr[vidx, 1:4], torch.zeros((), device=device))
    end_pos = _decode(ends.reshape(-1), n).reshape(-1, 2, 3) / res - 0.5 \
        + (1 - 1e-8) / (res * 2) * torch.tanh(deform)
    end_col = None
    if use_color:
        end_col = torch.sigmoid(torch.where(found[..., None], vattr[vidx, 4:], torch.zeros((), device=device)))
    del vidx, found, deform

    # Dual vertices: cubes ordered by how many they emit (stable), each emitting its table groups in order.
    n_dual = _NUM_DUAL.to(device)[case]
    cube_order = torch.sort(n_dual, stable=True).indices
    first_vd = torch.cumsum(n_dual[cube_order], 0) - n_dual[cube_order]
    n_vd = int(n_dual.sum())
    ent_count = _ENTRY_COUNT.to(device)[case[cube_order]]
    ent_pos = torch.repeat_interleave(torch.arange(n_cubes, device=device), ent_count)   # index into cube_order
    ent_rank = torch.arange(ent_pos.numel(), device=device) - (torch.cumsum(ent_count, 0) - ent_count)[ent_pos]
    table_row = _ENTRY_START.to(device)[case[cube_order][ent_pos]] + ent_rank
    ent_cube = cube_order[ent_pos]
    ent_edge = _ENTRY_EDGE.to(device)[table_row]
    ent_vd = first_vd[ent_pos] + _ENTRY_VD.to(device)[table_row]
    del ent_pos, ent_rank, table_row, ent_count
    ent_edge_id = edge_of_slot[ent_cube, ent_edge]

    w0 = end_sdf[ent_edge_id, 0] * alpha[ent_cube, ea[ent_edge]]
    w1 = end_sdf[ent_edge_id, 1] * alpha[ent_cube, eb[ent_edge]]
    w0, w1 = w0[:, None], w1[:, None]
    ent_beta = beta[ent_cube, ent_edge][:, None]
    beta_sum = torch.zeros((n_vd, 1), device=device).index_add_(0, ent_vd, ent_beta)
    crossings = _interp(w0, w1, end_pos[ent_edge_id, 0], end_pos[ent_edge_id, 1])
    vertices = torch.zeros((n_vd, 3), device=device).index_add_(0, ent_vd, crossings * ent_beta) / beta_sum
    del crossings
    vertex_attrs = None
    if end_col is not None:
        c = _interp(w0, w1, end_col[ent_edge_id, 0], end_col[ent_edge_id, 1])
        vertex_attrs = torch.zeros((n_vd, c.shape[1]), device=device).index_add_(0, ent_vd, c * ent_beta) / beta_sum
        del c
    vd_gamma = gamma[cube_order].repeat_interleave(n_dual[cube_order])
    vd_of_slot = torch.zeros((n_cubes, 12), dtype=torch.long, device=device)
    vd_of_slot[ent_cube, ent_edge] = ent_vd
    del ent_cube, ent_edge, ent_vd, ent_edge_id, w0, w1, ent_beta, beta_sum

    # Quads around edges shared by 4 surface cubes; corners in ascending cube order are a "Z", so
    # reorder them into a cycle whose normal points to the positive end of the edge, then split.
    quad_slots = crossing & (edge_count[edge_of_slot.clamp(min=0)] == 4)
    slot_edge_q = edge_of_slot[quad_slots]
    slot_vd_q = vd_of_slot[quad_slots]
    srt, perm = torch.sort(slot_edge_q, stable=True)
    quads = slot_vd_q[perm].reshape(-1, 4)
    flip = end_sdf[srt.reshape(-1, 4)[:, 0], 0] > 0
    quads = torch.cat([quads[flip][:, [0, 1, 3, 2]], quads[~flip][:, [2, 3, 1, 0]]])
    g = vd_gamma[quads]
    split02 = (g[:, 0] * g[:, 2]) > (g[:, 1] * g[:, 3])
    tris = torch.where(split02[:, None], quads[:, [0, 1, 2, 0, 2, 3]], quads[:, [0, 1, 3, 3, 1, 2]])
    faces = tris.reshape(-1, 3)
    return MeshExtractResult(vertices, faces, vertex_attrs, res)
