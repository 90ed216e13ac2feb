"""Which dtype a device runs: the CPU's bf16 instructions decide on the CPU, CUDA runs the release's
float16, anything asked for is used as asked, and a wrong name is one clear error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cupid.errors import InputError
from cupid.models import dtype as policy
from cupid.models.dtype import (DTYPE_CHOICES, bf16_in_cpuinfo, cpu_has_bf16, describe_dtype_choice, dtype_name,
                                resolve_dtype)

AVX2_EPYC = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
             "flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni\n")
SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                   "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")
ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd aes sha2 crc32 atomics sve i8mm bf16 svebf16\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp\n"


@pytest.fixture()
def cpu(monkeypatch):
    """Pretend to be a machine: cpu('Linux', 'x86_64', cpuinfo=...) or cpu('Darwin', 'arm64', sysctl=...)."""

    def pretend(system: str, machine: str, cpuinfo: str = "", sysctl: str = "") -> list:
        calls: list = []
        monkeypatch.setattr(policy.platform, "system", lambda: system)
        monkeypatch.setattr(policy.platform, "machine", lambda: machine)
        monkeypatch.setattr(policy, "_read_cpuinfo", lambda: calls.append("cpuinfo") or cpuinfo)
        monkeypatch.setattr(policy, "_sysctl", lambda name: calls.append(name) or sysctl)
        cpu_has_bf16.cache_clear()
        return calls

    yield pretend
    cpu_has_bf16.cache_clear()  # the next user reads the real machine


def test_cpuinfo_flags_name_bf16_per_architecture():
    assert not bf16_in_cpuinfo(AVX2_EPYC, "x86_64")
    assert bf16_in_cpuinfo(SAPPHIRE_RAPIDS, "x86_64") and bf16_in_cpuinfo(ZEN4, "x86_64")
    assert bf16_in_cpuinfo(GRAVITON3, "aarch64") and not bf16_in_cpuinfo(GRAVITON2, "aarch64")
    assert not bf16_in_cpuinfo(GRAVITON3, "x86_64")      # Arm's "bf16" is no x86 flag
    assert not bf16_in_cpuinfo(SAPPHIRE_RAPIDS, "riscv64") and not bf16_in_cpuinfo("", "x86_64")


@pytest.mark.parametrize("system,machine,cpuinfo,sysctl,has", [
    ("Linux", "x86_64", AVX2_EPYC, "", False),
    ("Linux", "x86_64", SAPPHIRE_RAPIDS, "", True),
    ("Linux", "aarch64", GRAVITON3, "", True),
    ("Linux", "aarch64", GRAVITON2, "", False),
    ("Darwin", "arm64", "", "1", True),          # Apple M2 and later
    ("Darwin", "arm64", "", "0", False),         # Apple M1
    ("Darwin", "arm64", "", "", False),          # sysctl without the key (older macOS)
    ("Darwin", "x86_64", "", "1", False),
    ("Windows", "AMD64", SAPPHIRE_RAPIDS, "1", False),
])
def test_cpu_has_bf16_by_system(cpu, system, machine, cpuinfo, sysctl, has):
    calls = cpu(system, machine, cpuinfo=cpuinfo, sysctl=sysctl)
    assert cpu_has_bf16() is has
    if system == "Darwin" and machine == "arm64":
        assert calls == ["hw.optional.arm.FEAT_BF16"]


def test_the_answer_is_read_once(cpu):
    calls = cpu("Linux", "x86_64", cpuinfo=SAPPHIRE_RAPIDS)
    assert cpu_has_bf16() and cpu_has_bf16() and resolve_dtype("auto", "cpu") == torch.bfloat16
    assert calls == ["cpuinfo"]


def test_auto_per_device(cpu):
    cpu("Linux", "x86_64", cpuinfo=SAPPHIRE_RAPIDS)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16       # the release's use_fp16
    assert resolve_dtype("auto", torch.device("cuda", 1)) == torch.float16
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    cpu("Linux", "x86_64", cpuinfo=AVX2_EPYC)   # emulated bf16 runs several times slower than float32
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32


def test_what_is_asked_for_is_used_on_every_device(cpu):
    cpu("Linux", "x86_64", cpuinfo=AVX2_EPYC)
    for device in ("cpu", "cuda", "mps"):
        assert resolve_dtype("float16", device) == torch.float16
        assert resolve_dtype("bfloat16", torch.device(device)) == torch.bfloat16
        assert resolve_dtype("float32", device) == torch.float32
        assert resolve_dtype(torch.bfloat16, device) == torch.bfloat16
    assert [dtype_name(resolve_dtype(c, "cpu")) for c in DTYPE_CHOICES] == ["float32", "float32", "bfloat16",
                                                                            "float16"]


@pytest.mark.parametrize("bad", ["fp8", "half", "float64", "torch.float16", 16])
def test_a_wrong_name_lists_the_choices(bad):
    with pytest.raises(InputError) as info:
        resolve_dtype(bad, "cpu")  # type: ignore[arg-type]
    assert "auto, float32, bfloat16, float16" in info.value.message and repr(bad) in info.value.message


def test_an_unsupported_torch_dtype_is_refused():
    with pytest.raises(InputError, match="unsupported dtype float64: use one of auto, float32"):
        resolve_dtype(torch.float64, "cpu")


def test_dtype_names():
    assert [dtype_name(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == list(DTYPE_CHOICES[1:])


def test_the_choice_says_why(cpu):
    cpu("Linux", "x86_64", cpuinfo=SAPPHIRE_RAPIDS)
    assert describe_dtype_choice("auto", "cpu") == "bfloat16 (auto: this CPU has bf16 instructions)"
    assert describe_dtype_choice("bfloat16", "cpu") == "bfloat16 (asked for)"
    assert describe_dtype_choice(None, "cuda") == "float16 (auto: CUDA, as the release)"
    assert describe_dtype_choice("auto", "mps") == "float32 (auto: Apple MPS)"
    assert describe_dtype_choice("float32", "cuda") == "float32 (asked for)"
    cpu("Linux", "x86_64", cpuinfo=AVX2_EPYC)
    assert describe_dtype_choice("auto", "cpu") == "float32 (auto: this CPU has no bf16 instructions)"
    assert describe_dtype_choice("bfloat16", "cpu") == ("bfloat16 (asked for; this CPU has no bf16 instructions: "
                                                        "slower than float32)")
    assert describe_dtype_choice("float16", "cpu") == "float16 (asked for; slow on a CPU)"
    with pytest.raises(InputError):
        describe_dtype_choice("fp8", "cpu")


def test_this_machine_is_read_from_its_own_cpuinfo():
    """The real /proc/cpuinfo decides here (an AVX2-only CPU gets float32, one with AVX512-BF16 bfloat16)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("this checks Linux's /proc/cpuinfo, which this system does not have; on macOS and Windows "
                    "the sysctl and flag-parser tests above cover the choice")
    flags = set()
    for line in info.read_text().splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.partition(":")[2].split())
    cpu_has_bf16.cache_clear()
    x86 = "avx2" in flags or "sse2" in flags
    has = bool(flags & {"avx512_bf16", "amx_bf16"}) if x86 else "bf16" in flags
    assert cpu_has_bf16() is has
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if has else torch.float32)


# ---------------------------------------------------------------- the pipeline loads in what was chosen

def _torso_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The linears and convolutions of a network's torso (what its dtype casts)."""
    kinds = policy._primitive_types()
    return [m for torso in model.torso_modules() for m in torso.modules() if isinstance(m, kinds)]


def test_from_pretrained_runs_the_flows_in_the_dtype_asked_for(tiny_model, tmp_path):
    """The flows take the dtype; DINOv2, the decoders and the SLat encoder (one call a job) keep float32
    on the CPU (`network_dtype`); float32 asked for is float32 everywhere."""
    from cupid.export import load_bundle
    from cupid.pipeline import FLOW_ROLES, CupidPipeline
    from helpers.bundles import reconstruct_to

    pipe = CupidPipeline.from_pretrained(tiny_model, device="cpu", dtype="bfloat16")
    assert pipe.dtype == torch.bfloat16 and pipe.conditioner.dtype == torch.float32
    for role, model in pipe.models.items():
        want = torch.bfloat16 if role in FLOW_ROLES else torch.float32
        linears = _torso_linears(model)
        assert linears and {m.weight.dtype for m in linears} == {want}, role
        assert model.dtype == want, role
        norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm) and m.weight is not None]
        assert {m.weight.dtype for m in norms} <= {torch.float32}, role    # norms stay float32
    # and it runs: a whole job in bfloat16 (a dtype the pipeline's own tensors must not trip over)
    out = reconstruct_to(pipe, Path(__file__).parents[1] / "examples" / "monkey.png", tmp_path / "b", seed=1, steps=1)
    obj = load_bundle(out).scene["objects"][0]
    assert obj["counts"]["faces"] > 0 and obj["counts"]["gaussians"] > 0


def test_from_pretrained_auto_follows_the_policy(tiny_model, cpu):
    from cupid.pipeline import CupidPipeline

    cpu("Linux", "x86_64", cpuinfo=SAPPHIRE_RAPIDS)
    pipe = CupidPipeline.from_pretrained(tiny_model, device="cpu")       # dtype="auto" by default
    assert pipe.dtype == torch.bfloat16
    assert {m.weight.dtype for m in _torso_linears(pipe.models["slat_flow_model"])} == {torch.bfloat16}
    cpu("Linux", "x86_64", cpuinfo=AVX2_EPYC)
    pipe = CupidPipeline.from_pretrained(tiny_model, device="cpu", dtype=None)
    assert pipe.dtype == torch.float32 and pipe.conditioner.dtype == torch.float32
    assert {m.weight.dtype for m in _torso_linears(pipe.models["slat_flow_model"])} == {torch.float32}
    built = CupidPipeline(pipe.models, pipe.conditioner, pipe.ss_sampler, pipe.slat_sampler,
                          {"mean": pipe.slat_mean.tolist(), "std": pipe.slat_std.tolist()}, pipe.device)
    assert built.dtype == torch.float32   # a pipeline built directly says float32 unless told


def test_from_pretrained_refuses_a_wrong_dtype_before_loading(tmp_path):
    from cupid.pipeline import CupidPipeline

    with pytest.raises(InputError, match="unknown dtype 'half': use one of auto, float32, bfloat16, float16"):
        CupidPipeline.from_pretrained(tmp_path / "no-model-here", device="cpu", dtype="half")
