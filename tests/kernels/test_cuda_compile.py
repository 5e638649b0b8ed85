"""Every CUDA source in kernels/cuda/ compiles for sm_90 with no warning.

Needs no GPU. The compiler is nvcc when it is on PATH, else NVRTC from the
`nvidia-cuda-nvrtc-cu12` wheel (the library CuPy itself compiles with, and
one that loads without a GPU driver), else a system libnvrtc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SOURCE_DIR = Path(__file__).resolve().parents[2] / "kernels" / "cuda"
SOURCES = sorted(SOURCE_DIR.glob("*.cu"))
ARCH = "sm_90"

# What kernels/cupy_backend.py looks up by name in each source.
ENTRY_POINTS = {
    "hash_index.cu": ["index_probe", "index_insert", "index_erase"],
    "rows.cu": ["gather_rows", "scatter_rows"],
    "search.cu": [f"fused_topk_q{g}" for g in (1, 2, 4, 8, 16)] + ["merge_topk"],
}

Compiler = Callable[[Path], bytes]


def nvcc_compiler(nvcc: str, tmp_dir: Path) -> Compiler:
    def compile_source(source: Path) -> bytes:
        cubin = tmp_dir / (source.stem + ".cubin")
        command = [nvcc, f"-arch={ARCH}", "-cubin", "-Werror", "all-warnings"]
        done = subprocess.run(
            [*command, "-o", str(cubin), str(source)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        assert not done.stderr.strip(), done.stderr
        return cubin.read_bytes()

    return compile_source


def wheel_nvrtc_paths() -> list[Path]:
    """libnvrtc from the nvidia-cuda-nvrtc wheels (CUDA 12 and 13 layouts)."""
    # cuda_nvrtc/ is where the CUDA 12 wheel puts it, cu13/ the CUDA 13 one.
    patterns = ("nvidia/cuda_nvrtc/lib/libnvrtc.so.*", "nvidia/cu13/lib/libnvrtc.so.*")
    found: list[Path] = []
    for entry in map(Path, sys.path):
        for pattern in patterns:
            found += sorted(p for p in entry.glob(pattern) if "alt" not in p.name)
    return list(dict.fromkeys(found))


def load_nvrtc() -> ctypes.CDLL | None:
    candidates = [str(p) for p in wheel_nvrtc_paths()]
    system = ctypes.util.find_library("nvrtc")
    candidates += [system] if system else []
    for candidate in candidates:
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


def nvrtc_log(lib: ctypes.CDLL, program: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    return log.value.decode(errors="replace")


def nvrtc_cubin(lib: ctypes.CDLL, program: ctypes.c_void_p) -> bytes:
    size = ctypes.c_size_t()
    assert lib.nvrtcGetCUBINSize(program, ctypes.byref(size)) == 0
    cubin = ctypes.create_string_buffer(size.value)
    assert lib.nvrtcGetCUBIN(program, cubin) == 0
    return cubin.raw


def nvrtc_compiler(lib: ctypes.CDLL) -> Compiler:
    def compile_source(source: Path) -> bytes:
        program = ctypes.c_void_p()
        text = source.read_bytes()
        name = source.name.encode()
        assert (
            lib.nvrtcCreateProgram(ctypes.byref(program), text, name, 0, None, None)
            == 0
        )
        try:
            options = [f"--gpu-architecture={ARCH}".encode()]
            status = lib.nvrtcCompileProgram(
                program, len(options), (ctypes.c_char_p * len(options))(*options)
            )
            log = nvrtc_log(lib, program)
            # NVRTC has no -Werror: any warning in the log fails the test.
            assert status == 0, log
            assert "warning" not in log.lower(), log
            return nvrtc_cubin(lib, program)
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))

    return compile_source


@pytest.fixture(scope="module")
def compile_source(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc_compiler(nvcc, tmp_path_factory.mktemp("cubin"))
    lib = load_nvrtc()
    if lib is None:
        pytest.skip(
            "no CUDA compiler: nvcc is not on PATH and no libnvrtc was found "
            "(install nvidia-cuda-nvrtc-cu12 with the test extras)"
        )
    return nvrtc_compiler(lib)


def test_every_source_has_its_entry_points_listed() -> None:
    assert sorted(p.name for p in SOURCES) == sorted(ENTRY_POINTS)


@pytest.mark.parametrize("source", SOURCES, ids=[p.name for p in SOURCES])
def test_source_compiles_for_sm90_without_warnings(
    compile_source: Compiler, source: Path
) -> None:
    cubin = compile_source(source)
    assert cubin.startswith(b"\x7fELF")
    for name in ENTRY_POINTS[source.name]:
        assert name.encode() + b"\x00" in cubin, f"{name} missing from {source.name}"
