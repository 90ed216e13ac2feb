"""FlexiCubes lookup tables (Dual Marching Cubes patch groups and ambiguity checks), as data.

Cube corners are numbered k = x + 2·y + 4·z for corner offset (x, y, z) ∈ {0, 1}³. The 12 cube edges
are the corner pairs in `CUBE_EDGES` (x edges point +x, z edges +z, y edges -y; every cube lists a
shared edge with the same orientation, which lets neighbouring cubes agree on an edge's identity).

`DMC_GROUPS[case]`: for the corner-occupancy case (bit k set = corner k inside, i.e. sdf < 0), one
12-bit edge mask per dual vertex the cube emits; the dual vertex sits on the crossings of those edges.
`AMBIGUOUS_DIRECTION[case]`: cases whose ambiguous face is resolved by looking at the neighbouring
cube in that direction; when both cubes are ambiguous cases, the cube uses the complementary case
(255 - case) instead.
"""
from __future__ import annotations

import torch

# tables are built on the CPU even inside a `torch.device("meta")` context (models are built there)
_CPU = torch.device("cpu")

CUBE_CORNERS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1))

CUBE_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 5), (4, 5), (0, 4), (2, 3), (3, 7), (6, 7), (2, 6), (2, 0), (3, 1), (7, 5), (6, 4))

# 256 cases, 8 per row, separated by "|"; each case lists its dual vertices as hex edge masks.
_DMC_TEXT = (
    "- | 109 | 203 | 30a | 190 | 099 | 203 190 | 29a |"
    "230 | 109 230 | 033 | 13a | 3a0 | 2a9 | 1a3 | 0aa |"
    "80c | 905 | 203 80c | b06 | 190 80c | 895 | 203 190 80c | a96 |"
    "230 80c | 905 230 | 033 80c | 936 | 3a0 80c | aa5 | 1a3 80c | 8a6 |"
    "406 | 109 406 | 605 | 70c | 190 406 | 099 406 | 605 190 | 69c |"
    "230 406 | 109 230 406 | 435 | 53c | 3a0 406 | 2a9 406 | 5a5 | 4ac |"
    "c0a | d03 | e09 | f00 | 190 c0a | c93 | e09 190 | e90 |"
    "230 c0a | d03 230 | c39 | d30 | 3a0 c0a | ea3 | da9 | ca0 |"
    "8c0 | 109 8c0 | 203 8c0 | 30a 8c0 | 950 | 859 | 203 950 | a5a |"
    "230 8c0 | 109 230 8c0 | 033 8c0 | 13a 8c0 | b60 | a69 | 963 | 86a |"
    "0cc | 1c5 | 203 0cc | 3c6 | 15c | 055 | 203 15c | 256 |"
    "230 0cc | 1c5 230 | 033 0cc | 1f6 | 36c | 265 | 16f | 066 |"
    "406 8c0 | 109 406 8c0 | 605 8c0 | 70c 8c0 | 950 406 | 859 406 | 605 950 | e5c |"
    "230 406 8c0 | 109 230 406 8c0 | 435 8c0 | 53c 8c0 | b60 406 | a69 406 | d65 | c6c |"
    "4ca | 5c3 | 6c9 | 7c0 | 55a | 453 | 759 | 650 |"
    "230 4ca | 5c3 230 | 4f9 | 5f0 | 76a | 663 | 109 460 | 460 |"
    "460 | 109 460 | 203 460 | 30a 460 | 190 460 | 099 460 | 203 190 460 | 29a 460 |"
    "650 | 109 650 | 453 | 55a | 7c0 | 6c9 | 5c3 | 4ca |"
    "80c 460 | 905 460 | 203 80c 460 | b06 460 | 190 80c 460 | 895 460 | 203 190 80c 460 | a96 460 |"
    "650 80c | 905 650 | 453 80c | d56 | 7c0 80c | ec5 | 5c3 80c | cc6 |"
    "066 | 109 066 | 265 | 36c | 190 066 | 099 066 | 265 190 | 2fc |"
    "256 | 109 256 | 055 | 15c | 3c6 | 2cf | 1c5 | 0cc |"
    "86a | 963 | a69 | b60 | 190 86a | 8f3 | a69 190 | af0 |"
    "a5a | b53 | 859 | 950 | bca | 203 8c0 | 9c9 | 8c0 |"
    "ca0 | 109 ca0 | 203 ca0 | 30a ca0 | d30 | c39 | 203 d30 | e3a |"
    "e90 | 109 e90 | c93 | d9a | f00 | e09 | d03 | c0a |"
    "4ac | 5a5 | 203 4ac | 7a6 | 53c | 435 | 203 53c | 636 |"
    "69c | 795 | 49f | 190 406 | 70c | 605 | 50f | 406 |"
    "8a6 | 109 8a6 | aa5 | bac | 936 | 83f | b35 | 230 80c |"
    "a96 | 109 a96 | 895 | 99c | b06 | a0f | 905 | 80c |"
    "0aa | 1a3 | 2a9 | 3a0 | 13a | 033 | 339 | 230 |"
    "29a | 393 | 099 | 190 | 30a | 203 | 109 | - |"
)

AMBIGUOUS_DIRECTION: dict[int, tuple[int, int, int]] = {
    61: (1, 0, 0), 62: (-1, 0, 0), 91: (0, 1, 0), 94: (0, -1, 0),
    103: (0, 0, 1), 110: (0, 0, 1), 111: (0, 0, 1), 118: (0, 0, -1),
    122: (0, 1, 0), 123: (0, 1, 0), 124: (1, 0, 0), 125: (1, 0, 0),
    155: (0, 0, 1), 157: (0, 0, 1), 159: (0, 0, 1), 167: (0, 1, 0),
    173: (0, -1, 0), 181: (0, 1, 0), 183: (0, 1, 0), 185: (0, 0, -1),
    188: (-1, 0, 0), 190: (-1, 0, 0), 199: (1, 0, 0), 203: (-1, 0, 0),
    211: (1, 0, 0), 215: (1, 0, 0), 217: (0, 0, -1), 218: (0, -1, 0),
    222: (0, -1, 0), 227: (-1, 0, 0), 229: (0, -1, 0), 230: (0, 0, -1),
    235: (-1, 0, 0), 237: (0, -1, 0), 246: (0, 0, -1), 249: (0, 0, -1),
}

MAX_DUAL_VERTICES = 4
MAX_EDGES_PER_DUAL_VERTEX = 7


def _parse_groups() -> list[list[int]]:
    cases = [c.strip() for c in "".join(_DMC_TEXT).split("|")]
    cases = [c for c in cases if c]
    if len(cases) != 256:
        raise RuntimeError(f"DMC table has {len(cases)} cases, expected 256")
    return [[] if c == "-" else [int(m, 16) for m in c.split()] for c in cases]


DMC_GROUPS: list[list[int]] = _parse_groups()


def dmc_edge_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(edges [256, 4, 7] long, ascending edge ids padded with -1; num_dual_vertices [256] long)."""
    table = torch.full((256, MAX_DUAL_VERTICES, MAX_EDGES_PER_DUAL_VERTEX), -1, dtype=torch.long, device=_CPU)
    counts = torch.zeros(256, dtype=torch.long, device=_CPU)
    for case, masks in enumerate(DMC_GROUPS):
        counts[case] = len(masks)
        for j, mask in enumerate(masks):
            edges = [e for e in range(12) if mask >> e & 1]
            table[case, j, :len(edges)] = torch.tensor(edges, dtype=torch.long, device=_CPU)
    return table, counts


def ambiguity_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(is_ambiguous [256] bool, direction [256, 3] long) for the face-ambiguity check."""
    flag = torch.zeros(256, dtype=torch.bool, device=_CPU)
    direction = torch.zeros(256, 3, dtype=torch.long, device=_CPU)
    for case, d in AMBIGUOUS_DIRECTION.items():
        flag[case] = True
        direction[case] = torch.tensor(d, dtype=torch.long, device=_CPU)
    return flag, direction
