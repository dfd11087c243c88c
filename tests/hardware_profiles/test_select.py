from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.errors import SettingsError
from hardware_profiles.detect import MachineFacts, find_delegates
from hardware_profiles.profiles import load_profile, load_profiles
from hardware_profiles.select import choose

SMALL_BOX = MachineFacts("x86_64", 2, 8.0, ("CPUExecutionProvider",), True, (), False, None)


@pytest.fixture(scope="module")
def profiles():
    return load_profiles()


def test_shipped_profiles_cover_cpu_gpu_and_accelerator_boxes(profiles):
    assert {"cpu-small", "cpu-large", "gpu-cuda", "accel-tflite-delegate", "accel-openvino"} <= set(profiles)
    assert profiles["gpu-cuda"].providers[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert profiles["accel-tflite-delegate"].runtime == "litert"
    for p in profiles.values():
        assert p.latency_budget_ms_per_study > 0 and p.memory_cap_mb > 0 and p.precision in {"INT8", "FP16", "FP32"}


def test_small_box_gets_cpu_small_and_every_other_profile_says_why_not(profiles):
    choice = choose(profiles, SMALL_BOX)
    assert choice.profile.name == "cpu-small"
    why = dict(choice.reasons)
    assert "CUDAExecutionProvider" in why["gpu-cuda"]
    assert "cores" in why["cpu-large"]
    assert "delegate" in why["accel-tflite-delegate"]


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (replace(SMALL_BOX, cores=16, memory_gb=32), "cpu-large"),
        (replace(SMALL_BOX, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"), gpu_visible=True), "gpu-cuda"),
        (replace(SMALL_BOX, delegates=(("libvx_delegate.so", "/usr/lib/libvx_delegate.so"),)), "accel-tflite-delegate"),
        (replace(SMALL_BOX, ort_providers=("OpenVINOExecutionProvider", "CPUExecutionProvider")), "accel-openvino"),
        # CUDA provider installed but no GPU visible: not a GPU box
        (replace(SMALL_BOX, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")), "cpu-small"),
    ],
)
def test_choice_follows_what_the_machine_offers(profiles, facts, expected):
    assert choose(profiles, facts).profile.name == expected


def test_forced_profile_that_cannot_run_falls_back_with_a_reason(profiles):
    choice = choose(profiles, SMALL_BOX, forced="gpu-cuda")
    assert choice.profile.name == "cpu-small"
    assert choice.reasons[0][0] == "gpu-cuda" and "forced by settings but" in choice.reasons[0][1]
    with pytest.raises(KeyError):
        choose(profiles, SMALL_BOX, forced="quantum")


def test_invalid_profile_file_is_refused_with_the_problem(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name="x"\ndescription="d"\npriority=1\nruntime="tensorflow"\nbackend="onnx-int8"\nthreads=0\nbatch_size=1\n'
                   'precision="INT4"\nworkers=1\nlatency_budget_ms_per_study=1\nmemory_cap_mb=1\n', encoding="utf-8")
    with pytest.raises(SettingsError) as err:
        load_profile(bad)
    assert "runtime must be" in str(err.value) and "precision must be" in str(err.value) and "threads" in str(err.value)


def test_delegate_library_on_disk_is_found(tmp_path: Path):
    lib = tmp_path / "libvx_delegate.so"
    lib.write_bytes(b"\x7fELF")
    assert find_delegates(("libedgetpu.so.1", "libvx_delegate.so"), extra_dirs=(str(tmp_path),)) == (("libvx_delegate.so", str(lib)),)
