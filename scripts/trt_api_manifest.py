"""Write tests/data/trt_api_manifest.json: which TensorRT Python names edgecnn uses exist, per version.

TensorRT cannot be imported here (its bindings need the CUDA libraries), so the manifest is
read from two public sources and the tests check edgecnn's build plans against it:

* NVIDIA's binding sources (``python/src`` in github.com/NVIDIA/TensorRT) at each release
  tag give the structure: which enum has which member, which class has which method or
  property; ``include/NvInfer.h`` at the same tag gives enum values and deprecations.
* The ``tensorrt-cu12-bindings`` wheels (PyPI, 10.x and 11.x) give the shipped extension
  module; every name edgecnn uses must occur in it as a NUL-terminated string. A version
  with a wheel but no source tag (the newest 11.x) takes the structure of the newest tag
  below it, keeping only the names its extension module contains.

TensorRT 8.5/8.6 have no bindings wheel on PyPI (``tensorrt==8.6.1`` is a stub that
downloads from NVIDIA's index): those entries come from the sources alone.

Run where the package index is reachable, with a clone of NVIDIA/TensorRT:

    python scripts/trt_api_manifest.py --repo /path/to/TensorRT [-o tests/data/trt_api_manifest.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# version key -> (source tag or None, bindings wheel version or None). JetPack 5.1 = 8.5,
# JetPack 6.0 = 8.6, JetPack 6.1/6.2 = 10.3; then the newest 10.x and 11.x releases.
VERSIONS = {
    "8.5": ("8.5.3", None),
    "8.6": ("v8.6.1", None),
    "10.3": ("v10.3.0", "10.3.0"),
    "10.16": ("v10.16", "10.16.1.11"),
    "11.0": ("v11.0", "11.0.0.114"),
    "11.1": ("v11.1", "11.1.0.106"),
    "11.4": (None, "11.4.0.106"),
}

# Every TensorRT Python name edgecnn.backends.tensorrt uses (owner -> names). Enum owners
# also get their integer values from NvInfer.h.
USED = {
    "tensorrt": ["Builder", "ILogger", "OnnxParser", "BuilderFlag", "NetworkDefinitionCreationFlag",
                 "MemoryPoolType", "DeviceType", "ProfilingVerbosity"],
    "Builder": ["create_network", "create_builder_config", "build_serialized_network",
                "create_optimization_profile"],
    "OnnxParser": ["parse_from_file", "num_errors", "get_error"],
    "IBuilderConfig": ["set_flag", "set_memory_pool_limit", "default_device_type", "DLA_core",
                       "builder_optimization_level", "profiling_verbosity", "add_optimization_profile",
                       "create_timing_cache", "set_timing_cache"],
    "IOptimizationProfile": ["set_shape"],
    "ITimingCache": ["serialize"],
    "BuilderFlag": ["FP16", "INT8", "SPARSE_WEIGHTS", "GPU_FALLBACK", "STRICT_TYPES", "OBEY_PRECISION_CONSTRAINTS"],
    "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "STRONGLY_TYPED"],
    "MemoryPoolType": ["WORKSPACE"],
    "DeviceType": ["GPU", "DLA"],
    "ProfilingVerbosity": ["DETAILED", "LAYER_NAMES_ONLY"],
}
ENUMS = ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType", "DeviceType", "ProfilingVerbosity")

_OWNER = re.compile(r'py::(class_|enum_)<[^;(]*?>\s*(?:\w+\s*)?[({]\s*m\s*,\s*"(\w+)"', re.S)
_MEMBER = re.compile(r'\.(value|def|def_property|def_property_readonly|def_readwrite|def_static)\(\s*"(\w+)"')


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def source_names(repo: Path, tag: str) -> dict[str, set[str]]:
    """owner -> member names bound in python/src at ``tag`` (module-level owners under 'tensorrt')."""
    files = [f for f in _git(repo, "ls-tree", "-r", "--name-only", tag, "python/src").split() if f.endswith(".cpp")]
    found: dict[str, set[str]] = {"tensorrt": set()}
    for name in files:
        text = _git(repo, "show", f"{tag}:{name}")
        owners = list(_OWNER.finditer(text))
        for i, owner in enumerate(owners):
            end = owners[i + 1].start() if i + 1 < len(owners) else len(text)
            found["tensorrt"].add(owner.group(2))
            members = found.setdefault(owner.group(2), set())
            members.update(m.group(2) for m in _MEMBER.finditer(text[owner.end():end]))
    return found


def header_enums(repo: Path, tag: str) -> dict[str, dict[str, dict]]:
    """enum -> Python member name -> {"value", "deprecated"} from include/NvInfer*.h at ``tag``."""
    text = ""
    for name in _git(repo, "ls-tree", "-r", "--name-only", tag, "include").split():
        if re.search(r"include/NvInfer(RuntimeBase|Runtime|)\.h$", name):
            text += _git(repo, "show", f"{tag}:{name}")
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)
    enums = {}
    for enum in ENUMS:
        m = re.search(r"enum class " + enum + r"\b[^{;]*\{(.*?)\};", text, re.S)
        if not m:
            continue
        members, value = {}, -1
        for item in m.group(1).split(","):
            im = re.match(r"\s*k(\w+)\s*(TRT_DEPRECATED_ENUM)?\s*(?:=\s*([^,]+))?\s*$", item)
            if not im:
                continue
            value = int(im.group(3), 0) if im.group(3) and re.fullmatch(r"\s*-?\d+\s*", im.group(3)) else value + 1
            members[im.group(1)] = {"value": value, "deprecated": bool(im.group(2))}
        enums[enum] = members
    return enums


def wheel_strings(version: str, workdir: Path) -> set[bytes]:
    """NUL-terminated strings of the bindings wheel's extension module (suffixes included:
    the linker merges a short literal into the tail of a longer one)."""
    dest = workdir / version
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                    "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "-d", str(dest),
                    f"tensorrt-cu12-bindings=={version}"], check=True)
    wheel = next(dest.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        so = next(n for n in zf.namelist() if n.endswith(".so") and "tensorrt" in Path(n).name)
        data = zf.read(so)
    return {chunk for chunk in data.split(b"\x00") if chunk}, wheel.name


def _in_strings(name: str, strings: set[bytes]) -> bool:
    """A name is in the module when some string ends with it (the linker merges tails)."""
    target = name.encode()
    return any(s.endswith(target) for s in strings)


def trtexec_flags(repo: Path, tag: str) -> dict:
    """Flags trtexec of ``tag`` parses (``samples/common/sampleOptions.cpp``), and those its help marks
    deprecated no-ops."""
    text = _git(repo, "show", f"{tag}:samples/common/sampleOptions.cpp")
    parsed = set(re.findall(r'(?:getAndDelOption|getAndDelRepeatedOption|checkEraseOption|getAndDelOptionWithPosition|'
                            r'getFormats|getOptimizationProfile|getShapesBuild|getShapesInference)\s*\(\s*\w+\s*,\s*"--(\w+)"',
                            text))
    parsed |= set(re.findall(r'getShapes\w*\s*\([^;]*?"--(\w+)"', text))
    parsed |= set(re.findall(r'"--(\w+)"', text)) & set(re.findall(r'"\s+--(\w+)', text))
    noop = set(re.findall(r'"\s+--(\w+)[^"]*\[Deprecated\][^"]*no-op', text))
    return {"parsed": sorted(parsed), "deprecated_noop": sorted(noop)}


POLYGRAPHY = {"polygraphy/backend/common/loader.py": {"BytesFromPath": []},
              "polygraphy/backend/trt/loader.py": {"EngineFromBytes": []},
              "polygraphy/backend/trt/runner.py": {"TrtRunner": []},
              "polygraphy/backend/base/runner.py": {"BaseRunner": ["activate", "deactivate", "get_input_metadata",
                                                                   "infer"]}}


def polygraphy_names(version: str, workdir: Path) -> dict:
    """Which Polygraphy classes/methods edgecnn's TrtRunner uses exist in the ``version`` wheel."""
    import ast

    dest = workdir / f"polygraphy-{version}"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
                    f"polygraphy=={version}"], check=True)
    found = {}
    with zipfile.ZipFile(next(dest.glob("*.whl"))) as zf:
        for path, classes in POLYGRAPHY.items():
            tree = ast.parse(zf.read(path))
            defined = {n.name: {f.name for f in n.body if isinstance(f, ast.FunctionDef)}
                       for n in tree.body if isinstance(n, ast.ClassDef)}
            for cls, methods in classes.items():
                found[cls] = cls in defined
                for method in methods:
                    found[f"{cls}.{method}"] = method in defined.get(cls, set())
    return {"version": version, "names": found}


def build(repo: Path) -> dict:
    manifest = {"generated_by": "scripts/trt_api_manifest.py", "versions": {}}
    last_tag = None
    with tempfile.TemporaryDirectory() as tmp:
        for key, (tag, wheel) in VERSIONS.items():
            structure_tag = tag or last_tag
            names = source_names(repo, structure_tag)
            enums = header_enums(repo, structure_tag)
            strings, wheel_name = wheel_strings(wheel, Path(tmp)) if wheel else (None, None)
            present, enum_values, deprecated, disagreements = {}, {}, [], []
            for owner, wanted in USED.items():
                for member in wanted:
                    in_source = member in names.get(owner, set())
                    in_wheel = None if strings is None else _in_strings(member, strings)
                    if tag and strings is not None and in_source and not in_wheel:
                        disagreements.append(f"{owner}.{member}")
                    exists = in_source and (in_wheel is not False)
                    present[f"{owner}.{member}"] = exists
                    if exists and owner in enums and member in enums[owner]:
                        enum_values[f"{owner}.{member}"] = enums[owner][member]["value"]
                        if enums[owner][member]["deprecated"]:
                            deprecated.append(f"{owner}.{member}")
            flags_tag = tag or last_tag
            manifest["versions"][key] = {
                "trtexec": dict(trtexec_flags(repo, flags_tag), source=f"NVIDIA/TensorRT {flags_tag}: "
                                "samples/common/sampleOptions.cpp"),
                "names": present,
                "enum_values": enum_values,
                "deprecated": sorted(deprecated),
                "structure_from": f"NVIDIA/TensorRT {structure_tag}: python/src, include/NvInfer.h",
                "confirmed_in": wheel_name,
                "source_not_in_wheel": disagreements,
            }
            last_tag = tag or last_tag
        manifest["polygraphy"] = polygraphy_names("0.53.6", Path(tmp))
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, type=Path, help="clone of github.com/NVIDIA/TensorRT (all tags)")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/trt_api_manifest.json")
    args = parser.parse_args()
    manifest = build(args.repo)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgecnn.fileio import write_text_atomic

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
