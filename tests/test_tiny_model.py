"""The tiny model is the same on every CPU: its fitted stage-1 decoders are fitted in float64 (kernel
choices of MKL/oneDNN/ATen change float32 rounding between Intel AMX, AVX-512, AVX2 and AMD machines, and
300 Adam steps amplified that to 1% of the UV cube, so the release-parity fixtures failed on other
machines), and seed 0's fit ships with the package."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from cupid.models import build_model
from cupid.tiny import FITTED_ASSET, FITTED_STEMS, _configs, make_tiny_model, shell_targets

REPO = Path(__file__).resolve().parents[1]

# A short fit of the UV decoder from seed 0's initial weights, hashed; run under other CPU kernels.
_SHORT_FIT = r"""
import hashlib, sys, torch
from cupid.models import build_model
from cupid.tiny import _configs, fit_stage1_decoder, randomize_weights, shell_targets
spec = _configs()["uv_vae_tiny_decoder"]
model = build_model(spec["name"], spec["args"])
randomize_weights(model, torch.Generator().manual_seed(0))
occ, uv = shell_targets()
fit_stage1_decoder(model, occ, uv, steps=int(sys.argv[1]))
state = model.state_dict()
print(hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest())
"""


def _short_fit_hash(env_extra: dict[str, str], steps: int = 6) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), os.environ.get("PYTHONPATH", "")]),
           **env_extra}
    out = subprocess.run([sys.executable, "-c", _SHORT_FIT, str(steps)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_the_fit_gives_the_same_bits_whatever_kernels_the_cpu_runs():
    """ATen's vector width and oneDNN's/MKL's instruction sets forced down to AVX2 (as on an AVX2-only or
    AMD machine) must not change a single bit of the fitted weights (a float32 fit changes 247k of them
    within 6 steps). Only realistic CPUs: with ATen's scalar fallback ("default", no x86-64 CPU of the
    last decade runs it) a gradient that is exactly 0 on one path and 1e-17 on the other still becomes a
    full Adam step; the packaged fit makes seed 0 independent even of that."""
    native = _short_fit_hash({})
    assert native == _short_fit_hash({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                      "MKL_ENABLE_INSTRUCTIONS": "AVX2"})


def test_the_packaged_fit_decodes_the_shell_and_its_uv_cube():
    """The asset is what it says: seed 0's decoders, which ignore the latent and decode the shell and the
    UV cube of the tiny camera (a wrong or stale asset would not)."""
    occ_target, uv_target = shell_targets()
    state = load_file(str(FITTED_ASSET))
    assert {k.split(".")[0] for k in state} == set(FITTED_STEMS)
    specs = _configs()
    for stem in FITTED_STEMS:
        model = build_model(specs[stem]["name"], specs[stem]["args"]).eval()
        model.load_state_dict({k[len(stem) + 1:]: v for k, v in state.items() if k.startswith(stem + ".")})
        latent = torch.randn(1, model.latent_channels, 4, 4, 4, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            out = model(latent)[0].numpy()
        occ = out[0] > 0
        assert (occ & occ_target).sum() / (occ | occ_target).sum() > 0.99
        if stem == "uv_vae_tiny_decoder":
            uv = 1 / (1 + np.exp(-out[1:3].transpose(1, 2, 3, 0)))
            err = np.abs(uv - np.clip(uv_target, 0.02, 0.98))[occ_target]
            assert err.mean() < 0.02 and err.max() < 0.06, (err.mean(), err.max())  # 10 and 31 px of 518


def test_make_tiny_model_writes_the_packaged_fit(tmp_path):
    out = make_tiny_model(tmp_path / "tiny")
    state = load_file(str(FITTED_ASSET))
    for stem in FITTED_STEMS:
        written = load_file(str(out / "ckpts" / f"{stem}.safetensors"))
        for k, v in written.items():
            assert torch.equal(v, state[f"{stem}.{k}"]), (stem, k)
