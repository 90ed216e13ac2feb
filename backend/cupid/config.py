"""Every model id, checkpoint name and default of the pipeline, in one place.

CUPID's release (`hbb1/Cupid`) holds the pose-aware stage-1 flow, the UV-cube VAE and the stage-2
flow; TRELLIS-image-large supplies the occupancy decoder, the SLat encoder (frozen, compresses
DINOv2 features to 8 channels) and the SLat decoders. A model directory (local or on the Hub) has
`pipeline.json` with `{"name": ..., "args": {"models": {ROLE: STEM, ...}, samplers..., ...}}`; a STEM
is relative to that directory, or a full `owner/repo/ckpts/NAME` id.
"""
from __future__ import annotations

CUPID_MODEL_ID = "hbb1/Cupid"
TRELLIS_MODEL_ID = "microsoft/TRELLIS-image-large"
DINOV2_ID = "dinov2_vitl14_reg"  # TRELLIS' torch.hub name; cupid.models.dinov2 also takes HF ids
DINOV2_HF_ID = "facebook/dinov2-with-registers-large"
MOGE_ID = "Ruicheng/moge-vitl"  # MoGe v1, the point-map model CUPID's release uses (affine: no units)
# MoGe-2 ViT-L (Microsoft's release, `model.pt` with a scale head): a metric point map, so scenes and
# *Real size* objects come out in meters. Scene mode uses it whenever its weights are in the cache (after
# `cupid download`), else MoGe v1; `--point-map-model` (or pipeline.json "moge_model") picks another.
MOGE2_ID = "Ruicheng/moge-2-vitl"
MOGE_FILE = "model.pt"

# Segment Anything: scene mode's automatic masks and picks (cupid.models.sam loads the official .pth).
# Meta publishes the checkpoints only on dl.fbaipublicfiles.com; ybelkada/segment-anything on the Hub
# holds byte-identical copies (Git LFS SHA-256 equal to the official files' below) at SAM_REVISION, the
# revision they were checked at (cupid.hub fetches the default branch, which holds the same files).
# ViT-B by default: scene mode must work on a CPU, and ViT-B's encoder (91M parameters, 375 MB) needs
# about a sixth of ViT-H's compute (636M parameters, 2.5 GB download) per photo, for masks of whole
# objects that differ little (SAM's paper: ViT-H gains only marginally over ViT-L, and ViT-B trails
# them by a few points of mIoU). A GPU user can pick vit_h with CUPID_SAM_CHECKPOINT.
SAM_REPO_ID = "ybelkada/segment-anything"
SAM_REVISION = "7790786db131bcdc639f24a915d9f2c331d843ee"
SAM_FILES: dict[str, str] = {
    "vit_b": "checkpoints/sam_vit_b_01ec64.pth",
    "vit_l": "checkpoints/sam_vit_l_0b3195.pth",
    "vit_h": "checkpoints/sam_vit_h_4b8939.pth",
}
SAM_SHA256: dict[str, str] = {
    "vit_b": "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    "vit_l": "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    "vit_h": "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
}
SAM_MODEL_TYPE = "vit_b"
SAM_FILENAME = SAM_FILES[SAM_MODEL_TYPE]
SAM_ID = f"{SAM_REPO_ID}/{SAM_FILENAME}"  # what cupid.models.sam.load_sam takes: owner/repo/path

# Roles the pipeline loads, and the checkpoints of the official release that fill them.
RELEASE_MODELS: dict[str, str] = {
    "sparse_structure_flow_model": "ckpts/suv_flow_img_dit_L_16l8_fp16",
    "sparse_structure_decoder": f"{TRELLIS_MODEL_ID}/ckpts/ss_dec_conv3d_16l8_fp16",
    "sparse_structure_uv_decoder": "ckpts/uv_vae_conv3d_16l8_fp16_decoder",
    "slat_flow_model": "ckpts/slat_flow_img_dit_L_64l8p2_fp16",
    "slat_encoder": f"{TRELLIS_MODEL_ID}/ckpts/slat_enc_swin8_B_64l8_fp16",
    "slat_decoder_mesh": f"{TRELLIS_MODEL_ID}/ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16",
    "slat_decoder_gs": f"{TRELLIS_MODEL_ID}/ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16",
}

# Object mode's background remover, as CUPID's release runs it (`ImageProcessor` in
# cupid/pipelines/processing.py): an opaque photo is downsized to at most REMOVER_MAX_SIZE px on its
# long side, then cut out by rembg's "u2net" session. The weights come from the weights cache, never
# from rembg's own download to ~/.u2net: u2net.onnx as rembg publishes it (GitHub release v0.0.0),
# mirrored on Hugging Face (tomjackson2023/rembg; U2NET_REVISION is the revision others have checked
# it at, cupid.hub fetches the default branch) and checked against the md5 rembg itself pins for that
# file. A model's pipeline.json may name its own remover file ("background_model", relative to the
# model directory), as the tiny model does.
U2NET_REPO = "tomjackson2023/rembg"
U2NET_REVISION = "cd3a3d6767a7859efea31ef0f2f373582cf06d82"
U2NET_FILE = "u2net.onnx"
U2NET_MD5 = "60024c5c889badc19c04ad937298a77b"
REMOVER_MAX_SIZE = 1024

# Files `cupid download` fetches from each repository: everything a run needs, so that afterwards
# HF_HUB_OFFLINE=1 runs need no network (the model's own repo is DOWNLOAD_PATTERNS[CUPID_MODEL_ID]).
DOWNLOAD_PATTERNS: dict[str, list[str]] = {
    CUPID_MODEL_ID: ["pipeline.json", "ckpts/*"],
    TRELLIS_MODEL_ID: [
        "ckpts/ss_dec_conv3d_16l8_fp16.*",
        "ckpts/slat_enc_swin8_B_64l8_fp16.*",
        "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16.*",
        "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16.*",
    ],
    DINOV2_HF_ID: ["config.json", "model.safetensors"],
    MOGE2_ID: [MOGE_FILE],
    MOGE_ID: [MOGE_FILE],
    SAM_REPO_ID: [SAM_FILENAME],
    U2NET_REPO: [U2NET_FILE],
}

# Sampler defaults (TRELLIS-image-large's pipeline.json); a model's pipeline.json overrides them.
SPARSE_STRUCTURE_SAMPLER = {"sigma_min": 1e-5, "steps": 25, "cfg_strength": 7.5,
                            "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
SLAT_SAMPLER = {"sigma_min": 1e-5, "steps": 25, "cfg_strength": 3.0,
                "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}

DINO_SIZE = 518            # DINOv2 input side
VISUAL_COND_SIZE = 256     # side of the RGB×alpha image the stage-2 conv head sees
CROP_PADDING = 1.2         # square crop side = 1.2 × the object's box
ALPHA_THRESHOLD = 0.8      # alpha above which a pixel belongs to the object's box
MIN_UV_VOXELS = 10         # stage 1 lowers the occupancy threshold until this many voxels carry uv
UV_THRESHOLD_STEP = 0.05
MAX_IMAGE_PIXELS = 64_000_000   # larger photos are refused before decoding
# The only decoders a photo or mask file is opened with (PIL format names; the README's list; a phone's
# multi-picture JPEG opens through JPEG): anything else (EPS runs Ghostscript, and dozens of rarely
# fuzzed decoders) is refused as not a readable image before any decoder reads it
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP")
MAX_OBJECTS = 64                # objects a scene's label image may hold (cupid serve --max-objects)
MAX_PROMPTS = 64                # points + boxes of one request, one object each (cupid serve --max-prompts)
MIN_IMAGE_SIDE = 16
