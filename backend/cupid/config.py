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
MOGE_ID = "Ruicheng/moge-vitl"  # the point-map model of scene mode (MoGe v1, as CUPID's release uses)

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
    MOGE_ID: ["model.pt"],
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
MIN_IMAGE_SIDE = 16
