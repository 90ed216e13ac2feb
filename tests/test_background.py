"""Object mode's background remover: the tiny u2net through rembg, the pipeline on opaque photos, and errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cupid import background, config
from cupid.background import BackgroundRemover
from cupid.errors import CheckpointError, InputError
from cupid.hub import WEIGHTS_DIR_ENV
from cupid.export import load_bundle
from cupid.preprocess import preprocess
from cupid.tiny import TINY_REMOVER_FILE, write_tiny_remover
from helpers.bundles import reconstruct_to

REPO = Path(__file__).resolve().parents[1]
ALPHA_PHOTO = REPO / "examples" / "monkey.png"


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """An ordinary opaque photo: smooth colour gradients and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + 1), 0.5 + 0.4 * np.cos(5 * yy), 0.4 + 0.3 * xx * yy], -1)
    rgb = rgb + rng.normal(0, 0.03, rgb.shape)
    return Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")


def jpeg(img: Image.Image, path: Path) -> Path:
    img.save(path, format="JPEG", quality=92)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return write_tiny_remover(tmp_path_factory.mktemp("u2net") / "u2net_tiny.onnx")


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from cupid.pipeline import CupidPipeline
    return CupidPipeline.from_pretrained(tiny_model, device="cpu")


def central_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(alpha > 0.8 * 255)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_tiny_remover_runs_in_rembgs_own_custom_session(tiny_onnx, monkeypatch):
    import rembg
    monkeypatch.setenv("U2NET_HOME", str(tiny_onnx.parent))  # newer rembg only loads custom models from there
    session = rembg.new_session("u2net_custom", model_path=str(tiny_onnx))
    inputs, outputs = session.inner_session.get_inputs(), session.inner_session.get_outputs()
    assert [(i.name, i.shape, i.type) for i in inputs] == [("input.1", [1, 3, 320, 320], "tensor(float)")]
    assert len(outputs) == 7 and outputs[0].shape == [1, 1, 320, 320]
    cut = np.asarray(rembg.remove(photo(400, 300), session=session))
    assert cut.shape == (300, 400, 4)
    # the central half of the frame is kept, the rest is cut away
    assert central_box(cut[..., 3]) == (100, 75, 299, 224)
    assert cut[..., 3][:60].max() == 0 and cut[..., 3][:, :80].max() == 0
    # and our remover (rembg's u2net session class on that file) cuts exactly the same
    ours = np.asarray(BackgroundRemover(tiny_onnx)(photo(400, 300)))
    np.testing.assert_array_equal(ours, cut)


def test_uniform_photo_is_bad_input(tiny_onnx):
    for colour in [(128, 128, 128), (250, 20, 30), (0, 0, 0)]:
        with pytest.raises(InputError) as err:
            preprocess(Image.new("RGB", (240, 180), colour), remover=BackgroundRemover(tiny_onnx))
        assert err.value.message == "no object found in the photo; give a mask"
        assert err.value.code == "bad_input"


def test_remover_is_loaded_once(tiny_onnx):
    a = background.load_session(tiny_onnx)
    assert background.load_session(str(tiny_onnx)) is a


def test_tiny_model_names_its_remover(tiny_model):
    args = json.loads((tiny_model / "pipeline.json").read_text())["args"]
    assert args["background_model"] == TINY_REMOVER_FILE and (tiny_model / TINY_REMOVER_FILE).is_file()


def test_alpha_photo_and_mask_never_call_the_remover(tiny_onnx):
    class Refuse:
        def __call__(self, image):
            raise AssertionError("the remover ran on a photo that has alpha or a mask")

    cutout = Image.open(ALPHA_PHOTO)
    a, b = preprocess(cutout, remover=Refuse()), preprocess(cutout)
    assert a.crop == b.crop and np.array_equal(a.cond_image.numpy(), b.cond_image.numpy())
    mask = np.zeros((180, 240), np.uint8)
    mask[40:120, 60:200] = 255
    c, d = preprocess(photo(240, 180), mask=mask, remover=Refuse()), preprocess(photo(240, 180), mask=mask)
    assert c.crop == d.crop and np.array_equal(c.visual_image.numpy(), d.visual_image.numpy())
    # a mask over an opaque photo is used as it is, not replaced by the remover's cut-out
    assert c.crop.offset != preprocess(photo(240, 180), remover=BackgroundRemover(tiny_onnx)).crop.offset


@pytest.mark.parametrize("size", [(480, 360), (1600, 1200)])
def test_opaque_jpeg_reconstructs_with_the_camera_in_the_photos_pixels(pipe, tmp_path, size):
    """The tiny remover keeps the central half of the (downsized) photo; the tiny model's shell centre
    projects to the crop's centre. Both must come out in the ORIGINAL photo's pixels, also when the
    photo is first downsized to 1024 px for the remover (1600x1200 -> 1024x768)."""
    W, H = size
    src = jpeg(photo(W, H, seed=1), tmp_path / "photo.jpg")
    out = reconstruct_to(pipe, src, tmp_path / "bundle", seed=0)
    scene = load_bundle(out).scene
    assert (scene["image"]["width"], scene["image"]["height"]) == (W, H)
    assert Image.open(out / scene["image"]["file"]).size == (W, H)
    # the crop, independently of the preprocessing code: the central half box, grown 1.2x
    side = 1.2 * max(W, H) / 2
    # the shell's centre is the object frame's origin; the upright world stands the object on z = 0,
    # so it is where the object's transform puts that origin
    K, R, t = (np.array(scene["camera"][k]) for k in ("K", "R", "t"))
    origin = np.array(scene["objects"][0]["matrix_world"])[:3, 3]
    cam = K @ (R @ origin + t)
    centre = cam[:2] / cam[2]
    assert np.abs(centre - np.array([W / 2, H / 2])).max() < 0.03 * side
    assert K[0, 0] == pytest.approx(side / 2 / np.tan(np.radians(20.0)), rel=0.1)
    # and exactly the crop the preprocessing reports, in photo pixels
    crop = preprocess(src, remover=BackgroundRemover(Path(pipe.source) / TINY_REMOVER_FILE)).crop
    assert crop.size == pytest.approx(side, rel=0.01)
    assert np.abs(np.array(crop.offset) + crop.size / 2 - np.array([W / 2, H / 2])).max() < 0.01 * side


def test_uniform_jpeg_through_the_pipeline_builds_nothing(pipe, tmp_path):
    src = jpeg(Image.new("RGB", (320, 240), (90, 140, 200)), tmp_path / "wall.jpg")
    with pytest.raises(InputError, match="^no object found in the photo; give a mask$"):
        reconstruct_to(pipe, src, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def _offline_cache(monkeypatch, cache: Path) -> None:
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(cache))


def test_no_weights_and_no_network_names_cupid_download(monkeypatch, tmp_path):
    _offline_cache(monkeypatch, tmp_path / "empty-cache")
    with pytest.raises(CheckpointError) as err:
        BackgroundRemover()(photo(64, 64))
    assert "cupid download" in err.value.message and "\n" not in err.value.message
    assert config.U2NET_FILE in err.value.message
    # and `cupid download` fetches it
    assert config.DOWNLOAD_PATTERNS[config.U2NET_REPO] == [config.U2NET_FILE]


def test_official_weights_come_from_the_weights_cache_and_are_checked(monkeypatch, tmp_path, tiny_onnx):
    root = tmp_path / "cache" / f"models--{config.U2NET_REPO.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("b" * 40)
    cached = root / "snapshots" / ("b" * 40) / config.U2NET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_onnx.read_bytes())  # not rembg's u2net.onnx: its md5 differs
    _offline_cache(monkeypatch, tmp_path / "cache")
    assert background.u2net_weights() == cached
    with pytest.raises(CheckpointError, match="is not rembg's u2net.onnx"):
        BackgroundRemover()(photo(64, 64))


def test_unreadable_or_missing_remover_file(tmp_path):
    bad = tmp_path / "u2net.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(CheckpointError, match="cannot load the background remover"):
        BackgroundRemover(bad)(photo(64, 64))
    with pytest.raises(CheckpointError, match="not found"):
        BackgroundRemover(tmp_path / "missing.onnx")(photo(64, 64))
