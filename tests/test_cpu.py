"""edgecnn.cpu: the host's CPU flags and class, read once for every part of edgecnn."""

from __future__ import annotations

import platform

import pytest

from edgecnn import cpu

X86_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n\nprocessor\t: 1\nflags\t: avx512_vnni\n"
X86_VNNI = "flags\t: fpu avx2 avx512f avx512bw avx512_vnni\n"
X86_AVX_VNNI = "flags\t: fpu avx2 avx_vnni\n"
A72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"
A76 = "Features\t: fp asimd asimddp asimdhp\n"
NEOVERSE_V1 = "Features\t: fp asimd asimddp sve i8mm bf16\n"


@pytest.mark.parametrize("machine, cpuinfo, expected", [
    ("x86_64", X86_AVX2, "x86-avx2"),  # the first processor's flags only
    ("x86_64", X86_VNNI, "x86-vnni"),
    ("AMD64", X86_AVX_VNNI, "x86-vnni"),
    ("x86_64", "flags\t: fpu sse2 avx\n", "other"),
    ("aarch64", A72, "arm64-neon"),
    ("aarch64", A76, "arm64-dot"),
    ("arm64", NEOVERSE_V1, "arm64-i8mm"),
    ("riscv64", "isa\t: rv64imafdc\n", "other"),
    ("x86_64", "", "other"),
])
def test_cpuinfo_text_gives_its_class(machine, cpuinfo, expected):
    assert cpu.classify(machine, cpu.parse_flags(cpuinfo)) == expected
    assert expected in cpu.CPU_CLASSES


def test_flags_of_interest_keep_their_order():
    assert cpu.cpu_flags(cpu.parse_flags(NEOVERSE_V1)) == ["asimd", "asimddp", "i8mm", "sve", "bf16"]
    assert cpu.cpu_flags(["avx512_vnni", "avx2", "nonsense"]) == ["avx2", "avx512_vnni"]


ZEN2 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\n"
        "stepping\t: 0\nflags\t\t: avx2\n\nprocessor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\n")
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd i8mm\nCPU implementer\t: 0x41\nCPU variant\t: 0x1\nCPU part\t: 0xd40\n"


@pytest.mark.parametrize("cpuinfo, expected", [
    (ZEN2, "family 23 model 49 stepping 0"),  # "model name" is not the model; the first processor only
    (GRAVITON3, "implementer 0x41 part 0xd40 variant 0x1"),
    (X86_AVX2, ""),
    ("", ""),
])
def test_cpuinfo_text_gives_its_core_design(cpuinfo, expected):
    assert cpu.parse_identity(cpuinfo) == expected


def test_the_environment_block_names_the_core_design():
    """One marketing name ("AMD EPYC") covers cores whose int8 speed differs: the block says which."""
    from edgecnn.measure.sysinfo import environment, environment_lines

    env = environment(2)
    assert env["cpu_id"] == cpu.host_identity()
    line = environment_lines({**env, "cpu_id": "family 23 model 49 stepping 0"})[0]
    assert "(family 23 model 49 stepping 0; flags: " in line
    assert "(flags: " in environment_lines({**env, "cpu_id": ""})[0]  # blocks recorded before it read the same


def test_this_host_is_named_and_recorded_with_measurements():
    from edgecnn.measure.sysinfo import system_info

    host = cpu.host_class()
    assert host == cpu.classify(platform.machine(), cpu.host_flags())
    assert cpu.describe_host().startswith(f"CPU class {host} (")
    info = system_info()
    assert info["cpu_class"] == host and info["cpu_flags"] == cpu.cpu_flags()


def test_the_device_agent_reports_the_same_flags_and_class():
    """The agent (no torch, run from a zip on devices) reads the CPU through the same module."""
    from edgecnn.measure import agent

    info = agent.probe()
    assert info["cpu_flags"] == cpu.cpu_flags() and info["cpu_class"] == cpu.host_class()


def test_eval_semantics_follow_the_cpu_class_that_runs_the_file(tmp_path):
    """``auto``: a file's own kernels where the class runs its target, the reference semantics elsewhere."""
    import onnx
    from onnx import TensorProto, helper

    from edgecnn.export.metadata import write_metadata
    from edgecnn.measure.accuracy import resolve_semantics

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert resolve_semantics(path, "auto", "x86-avx2") == "runtime"  # no target in the metadata: the file as it is
    for target, runs_on, elsewhere in (("ort-x86-vnni", "x86-vnni", "x86-avx2"), ("ort-arm", "arm64-dot", "x86-vnni"),
                                       ("ort-x86", "x86-avx2", "arm64-neon")):
        write_metadata(path, {"edgecnn.quant_target": target})
        assert resolve_semantics(path, "auto", runs_on) == "runtime"
        assert resolve_semantics(path, "auto", elsewhere) == "reference"
        assert resolve_semantics(path, "runtime", elsewhere) == "runtime"
    write_metadata(path, {"edgecnn.quant_target": "trt"})
    assert resolve_semantics(path, "auto", "x86-vnni") == "reference"
