"""CPU rasteriser and overlay: silhouettes against independent projections, z-buffer order,
perspective-correct depth/attributes, and the overlay image."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import trimesh

from cupid.export import (project_points, rasterize, rasterize_mesh, render_overlay,
                          render_silhouette)

W, H = 320, 240
K = np.array([[300.0, 0.0, 161.3], [0.0, 290.0, 118.7], [0.0, 0.0, 1.0]])


def _rot(axis, deg):
    return trimesh.transformations.rotation_matrix(np.radians(deg), axis)[:3, :3]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _projected_hull(vertices, R, t) -> np.ndarray:
    cam = vertices @ R.T + t
    xy = (cam @ K.T)[:, :2] / cam[:, 2:3]
    return cv2.convexHull(xy.astype(np.float64).astype(np.float32))[:, 0, :].astype(np.float64)


def _hull_mask(vertices, R, t) -> np.ndarray:
    """Independent silhouette of a convex mesh: pixel centres inside the convex hull of its
    projected vertices (half-plane tests, no triangles, no z-buffer)."""
    h = _projected_hull(vertices, R, t)
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    a, b = h, np.roll(h, -1, axis=0)
    sgn = np.sign(np.sum(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]))
    inside = np.ones((H, W), bool)
    for p, q in zip(a, b):
        inside &= sgn * ((q[0] - p[0]) * (ii - p[1]) - (q[1] - p[1]) * (jj - p[0])) >= -1e-9
    return inside


def _fillpoly_mask(vertices, R, t) -> np.ndarray:
    """The same hull filled by OpenCV (pixel centres on integers there, hence the -0.5 shift).
    fillPoly also paints pixels the boundary merely touches, so it is slightly larger."""
    h = _projected_hull(vertices, R, t) - 0.5
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.round(h * 256).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=8)
    return mask.astype(bool)


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_convex_silhouette_matches_projected_hull(shape):
    if shape == "cube":
        mesh = trimesh.creation.box(extents=(0.8, 0.6, 0.7))
    else:
        mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.45)
    R = _rot([1, 0, 0], 25) @ _rot([0, 1, 0], -35) @ _rot([0, 0, 1], 10)
    t = np.array([0.05, -0.03, 2.2])
    sil = render_silhouette(mesh.vertices, mesh.faces, K, R, t, W, H)
    ref = _hull_mask(np.asarray(mesh.vertices), R, t)
    assert sil.dtype == bool and sil.shape == (H, W)
    assert ref.sum() > 3000  # the object is well inside and sizeable
    assert _iou(sil, ref) >= 0.99
    poly = _fillpoly_mask(np.asarray(mesh.vertices), R, t)
    assert _iou(sil, poly) >= 0.97 and (sil & ~poly).sum() <= 0.002 * sil.sum()


def test_sphere_silhouette_matches_analytic_disc():
    # a finely tessellated sphere centred on the optical axis projects to (almost) a disc;
    # the exact image of a sphere of radius r at distance d has radius f·r/sqrt(d²-r²)
    r, d, f = 0.4, 2.0, 300.0
    Kd = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=r)
    sil = render_silhouette(mesh.vertices, mesh.faces, Kd, np.eye(3), np.array([0, 0, d]), W, H)
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rad = f * r / np.sqrt(d * d - r * r)
    disc = (jj - W / 2) ** 2 + (ii - H / 2) ** 2 <= rad ** 2
    assert _iou(sil, disc) >= 0.99


def _quad(z, x0, x1, y0, y1):
    v = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    return v, f


@pytest.mark.parametrize("near_first", [True, False])
def test_zbuffer_nearest_quad_wins(near_first):
    near_v, near_f = _quad(1.5, -0.3, 0.2, -0.2, 0.2)   # faces 0-1 or 2-3
    far_v, far_f = _quad(3.0, -0.1, 0.6, -0.3, 0.3)
    parts = [(near_v, near_f), (far_v, far_f)] if near_first else [(far_v, far_f), (near_v, near_f)]
    V = np.concatenate([parts[0][0], parts[1][0]])
    F = np.concatenate([parts[0][1], parts[1][1] + 4])
    near_ids = {0, 1} if near_first else {2, 3}
    frags = rasterize_mesh(V, F, K, np.eye(3), np.zeros(3), W, H)
    xy_n, _ = project_points(near_v, K, np.eye(3), np.zeros(3))
    xy_f, _ = project_points(far_v, K, np.eye(3), np.zeros(3))
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)

    def box(xy):
        return (jj >= xy[:, 0].min()) & (jj <= xy[:, 0].max()) & (ii >= xy[:, 1].min()) & (ii <= xy[:, 1].max())

    in_near, in_far = box(xy_n), box(xy_f)
    overlap = in_near & in_far
    assert overlap.sum() > 500
    ids = frags.face_id
    assert np.isin(ids[overlap], list(near_ids)).all()
    assert np.allclose(frags.depth[overlap], 1.5, atol=1e-4)
    only_far = in_far & ~in_near
    assert not np.isin(ids[only_far], list(near_ids)).any() and (ids[only_far] >= 0).all()
    assert np.allclose(frags.depth[only_far], 3.0, atol=1e-4)
    assert (ids[~(in_near | in_far)] == -1).all()
    assert np.isinf(frags.depth[~(in_near | in_far)]).all()


def test_depth_and_attributes_are_perspective_correct():
    # a plane tilted away from the camera: z = 2 + 0.8 x ; compare with ray-plane intersection
    v = np.array([[-0.6, -0.5, 0], [0.6, -0.5, 0], [0.6, 0.5, 0], [-0.6, 0.5, 0]], float)
    v[:, 2] = 2.0 + 0.8 * v[:, 0]
    f = np.array([[0, 1, 2], [0, 2, 3]])
    frags = rasterize_mesh(v, f, K, np.eye(3), np.zeros(3), W, H)
    m = frags.mask
    assert m.sum() > 10000
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rx = (jj - K[0, 2]) / K[0, 0]          # ray direction (rx, ry, 1)
    z_true = 2.0 / (1.0 - 0.8 * rx)        # z = 2 + 0.8 * rx * z
    assert np.allclose(frags.depth[m], z_true[m], rtol=1e-5)
    x_interp = frags.interpolate(v[:, :1], f)[..., 0]
    assert np.allclose(x_interp[m], (rx * z_true)[m], atol=1e-5)


def test_big_triangles_split_into_strips_give_the_same_image():
    mesh = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    R = _rot([1, 1, 0], 30)
    xy, z = project_points(mesh.vertices, K, R, np.array([0, 0, 1.6]))
    a = rasterize(xy, mesh.faces, W, H, depth=z)
    b = rasterize(xy, mesh.faces, W, H, depth=z, budget=500)
    assert a.mask.sum() > 20000
    assert np.array_equal(a.face_id, b.face_id) and np.array_equal(a.depth, b.depth)


def test_geometry_behind_camera_is_not_drawn():
    v, f = _quad(-1.0, -0.3, 0.3, -0.3, 0.3)
    assert not render_silhouette(v, f, K, np.eye(3), np.zeros(3), W, H).any()


def test_overlay_blends_inside_and_outlines_silhouette():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    t = np.array([0.0, 0.0, 2.0])
    colors = np.tile([[0.0, 0.0, 1.0]], (len(mesh.vertices), 1))
    out = render_overlay(photo, [(mesh.vertices, mesh.faces, colors)], K, np.eye(3), t, alpha=0.6,
                         outline_px=2)
    sil = render_silhouette(mesh.vertices, mesh.faces, K, np.eye(3), t, W, H)
    assert out.shape == photo.shape and out.dtype == np.uint8
    band = cv2.dilate(sil.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert np.array_equal(out[~band], photo[~band])          # untouched away from the object
    inner = cv2.erode(sil.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    # blue-shaded object blended at 60 %: blue rises, red falls on average
    assert out[inner][:, 2].astype(float).mean() > photo[inner][:, 2].astype(float).mean() + 40
    assert out[inner][:, 0].astype(float).mean() < photo[inner][:, 0].astype(float).mean() - 40
    edge = band & ~inner
    reddish = (out[..., 0] > 200) & (out[..., 2] < 120)
    assert reddish[edge].mean() > reddish[~band].mean() + 0.2  # the outline is drawn on the edge


def test_overlay_without_colours_uses_normals_and_handles_empty_view():
    photo = np.full((H, W, 3), 128, np.uint8)
    mesh = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    out = render_overlay(photo, [(mesh.vertices, mesh.faces, None)], K, _rot([0, 1, 0], 30), np.array([0, 0, 2.0]))
    assert (out != 128).any()
    # object entirely behind the camera: the photo comes back unchanged
    out2 = render_overlay(photo, [(mesh.vertices, mesh.faces, None)], K, np.eye(3), np.array([0, 0, -3.0]))
    assert np.array_equal(out2, photo)


def _dark_boxes(img: np.ndarray) -> list:
    """(x, y, w, h) of each separate black label box of an overlay (the photo and meshes are never black;
    the holes of letters such as 'o' are too small to count)."""
    n, _, stats, _ = cv2.connectedComponentsWithStats((img == 0).all(axis=2).astype(np.uint8), connectivity=8)
    return [tuple(int(v) for v in stats[k, :4]) for k in range(1, n) if stats[k, 2] > 12 and stats[k, 3] > 6]


def test_fit_labels_of_neighbouring_objects_neither_overlap_nor_leave_the_image():
    """Three objects side by side at the top edge of a small photo, with long fit labels: each label is
    its own box (none covers another) and every box lies whole inside the image."""
    photo = np.full((H, W, 3), 128, np.uint8)
    t = np.array([0.0, 0.0, 2.4])
    meshes = []
    for dx in (-0.45, 0.0, 0.45):
        box = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
        meshes.append((box.vertices + [dx, -0.55, 0.0], box.faces, np.full((len(box.vertices), 3), 0.9)))
    labels = [f"object_{k}: fit IoU 0.{37 + k}" for k in range(3)]
    out = render_overlay(photo, meshes, K, np.eye(3), t, labels=labels)
    boxes = _dark_boxes(out)
    assert len(boxes) == 3, boxes                                      # three separate boxes: no overlap
    for x, y, w, h in boxes:
        assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
        assert w > 60 and h > 8                                         # a whole label, not a clipped sliver


def test_a_label_wider_than_a_tiny_photo_shrinks_to_fit():
    from cupid.export.overlay import place_labels
    photo = np.full((40, 60, 3), 128, np.uint8)
    box = trimesh.creation.box(extents=(0.3, 0.3, 0.3))
    K_small = np.array([[60.0, 0, 30], [0, 60.0, 20], [0, 0, 1]])
    out = render_overlay(photo, [(box.vertices, box.faces, None)], K_small, np.eye(3), np.array([0, 0, 2.0]),
                         labels=["object_0: fit IoU 0.99"])
    (x, y, w, h), = _dark_boxes(out)
    assert x >= 0 and y >= 0 and x + w <= 60 and y + h <= 40
    assert place_labels([(50, 10), (50, 10)], [(0, 0, 10, 10), (0, 0, 10, 10)], 60, 40) == \
        [(0, 0, 50, 10), (0, 12, 50, 10)]   # above the object (clipped to the image), then below it
