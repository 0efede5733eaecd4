"""Build of itnet_ext._C: CPU kernels always, CUDA kernels when possible.

CUDA is built when torch is a CUDA build and nvcc is found; ITNET_FORCE_CUDA=1
forces it (e.g. on a machine without a GPU, to check that the sources compile
and link), ITNET_FORCE_CUDA=0 turns it off.

The vectorized CPU kernels (csrc/dense/cpu_fwd.cpp, cpu_bwd.cpp) are compiled
three times, for the DEFAULT, AVX2 and AVX512 capabilities, each with its own -m
flags; the library picks one at run time (see csrc/dense/cpu.cpp), so a
wheel built here runs on any x86-64.

ITNET_EMULATE=1 also builds itnet_ext._C_emu, the emulated-CUDA library
(csrc/emulate/, docs/design.md section 7): every CUDA kernel compiled by the
host compiler against the device emulator, registered as torch.ops.itnet_emu.*
for CPU tensors. Its .cu files are compiled with -fsanitize=thread
instrumentation whose hooks the emulator implements (the shared-memory race
and bounds checks); with ITNET_SANITIZE=1, with ASan + UBSan instead.

ITNET_FLASH_SWEEP adds the flash configuration sweep (csrc/dense/flash/sweep/,
dense/flash/sweep.h): "all", or comma-separated file-name patterns (e.g.
"fwd_*_f16,bwd_w8_t64_f16"). Without it those files are not compiled.

Objects are kept in build/<configuration>/ (the torch, the Python and the
flags in the name): a rebuild, or `pip install -e .` after another one,
compiles only what changed.
"""
import fnmatch
import glob
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit("itnet_ext compiles against the torch you run it with: install torch first "
             "(bash scripts/install_torch.sh cpu|cuda), then "
             "pip install --no-build-isolation -e .")

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
EMULATE_DIR = os.path.join(CSRC, "emulate")
EMULATE = os.environ.get("ITNET_EMULATE") == "1"
SWEEP_DIR = "csrc/dense/flash/sweep/"
SWEEP = [p.strip() for p in os.environ.get("ITNET_FLASH_SWEEP", "").split(",") if p.strip()]

# Sources compiled once per CPU capability, with these defines / flags.
MULTI_ARCH_SOURCES = ["csrc/dense/cpu_fwd.cpp", "csrc/dense/cpu_bwd.cpp", "csrc/scan/cpu_kernel.cpp",
                      "csrc/sparse/cpu_kernel.cpp", "csrc/lowrank/cpu_kernel.cpp"]
CPU_CAPABILITIES = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mbmi2", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
               "-mavx2", "-mfma", "-mbmi2", "-mf16c"],
}
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
IS_MACOS = sys.platform == "darwin"


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def want_cuda():
    force = os.environ.get("ITNET_FORCE_CUDA")
    if force == "0":
        return False
    has_nvcc = cpp_extension.CUDA_HOME is not None
    if force == "1":
        if torch.version.cuda is None:
            sys.exit("ITNET_FORCE_CUDA=1 but this torch is a CPU build")
        if not has_nvcc:
            sys.exit("ITNET_FORCE_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return True
    return torch.version.cuda is not None and has_nvcc


def cuda_include_dirs():
    # The toolkit's own headers first: the nvidia wheels' cuda_runtime_api.h
    # needs crt/ headers only the toolkit has. Then the headers torch's own
    # headers include (cusparse.h, ...), which CUDA builds of torch from PyPI
    # ship inside the nvidia wheels, not with nvcc.
    toolkit = os.path.join(cpp_extension.CUDA_HOME, "include")
    if not os.path.isfile(os.path.join(toolkit, "cuda_runtime_api.h")):
        sys.exit(f"CUDA_HOME={cpp_extension.CUDA_HOME} has no include/cuda_runtime_api.h; "
                 "set CUDA_HOME to the CUDA toolkit (e.g. /usr/local/cuda-13.0)")
    dirs = []
    for sp in sys.path:
        for sub in ("cu13", "cu12"):
            d = os.path.join(sp, "nvidia", sub, "include")
            if os.path.isdir(d):
                dirs.append(d)
        dirs += glob.glob(os.path.join(sp, "nvidia", "*", "include"))
    return [toolkit] + sorted(set(dirs) - {toolkit})


# ITNET_SANITIZE=1: the CPU library with AddressSanitizer and UndefinedBehaviorSanitizer
# (any UB report aborts). Load it with the sanitizer runtimes preloaded, as
# scripts/sanitize_tests.sh does; CPU only.
SANITIZE = (["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
             "-fno-omit-frame-pointer"] if os.environ.get("ITNET_SANITIZE") == "1" else [])


def build_tag():
    """The name of this configuration's build folder: what the objects depend on beyond
    their sources (ninja and the object checks below look after the sources)."""
    flavor = "cuda" if want_cuda() else "cpu"
    if SANITIZE:
        flavor += "-asan"
    if os.environ.get("ITNET_DEBUG") == "1":
        flavor += "-debug"
    version = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return f"{flavor}-{version}-torch{torch.__version__.replace('+', '_')}"


class Build(cpp_extension.BuildExtension):
    """BuildExtension plus the per-capability objects of MULTI_ARCH_SOURCES and the
    emulated CUDA objects, in a build folder that outlives the build."""

    def finalize_options(self):
        super().finalize_options()
        # pip's editable and isolated builds pass a new temporary folder each time;
        # a fixed one per configuration lets ninja skip every unchanged object
        self.build_temp = os.path.join(ROOT, "build", build_tag())

    def build_extensions(self):
        # Python's own CFLAGS carry -g, which doubles C++ compile times.
        if os.environ.get("ITNET_DEBUG") != "1":
            for attr in ("compiler_so", "compiler_cxx", "linker_so"):
                cmd = getattr(self.compiler, attr, None)
                if isinstance(cmd, list):
                    setattr(self.compiler, attr, [f for f in cmd if f not in ("-g", "-g3")])
        super().build_extensions()

    def build_extension(self, ext):
        if ext.name.endswith("_C_emu"):
            # its own folder: the same .cpp files are compiled with other flags than _C's
            base = self.build_temp
            self.build_temp = base + "-emulate"
            try:
                ext.extra_objects = list(ext.extra_objects or []) + self._emulated_objects(ext)
                super().build_extension(ext)
            finally:
                self.build_temp = base
            return
        ext.extra_objects = list(ext.extra_objects or []) + self._multi_arch_objects(ext)
        super().build_extension(ext)

    @staticmethod
    def _base_flags(ext, default_std="-std=c++17"):
        args = ext.extra_compile_args
        cflags = list(args.get("cxx", []) if isinstance(args, dict) else args)
        # the language standard and ABI defines BuildExtension added for this torch
        std = [f for f in cflags if f.startswith("-std=")] or [default_std]
        std += [f for f in cflags if f.startswith("-D")]
        inc = [f"-I{d}" for d in ext.include_dirs]
        macros = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext.define_macros]
        return std + inc + macros

    def _compile_objects(self, jobs, header_exts=("h",)):
        """jobs: (source, object, command). Compiles the objects older than their source
        or any header under csrc/ (in parallel); returns the objects in order."""
        deps = [p for ext in header_exts
                for p in glob.glob(os.path.join(CSRC, "**", f"*.{ext}"), recursive=True)]
        newest_dep = max(os.path.getmtime(p) for p in deps)

        def run(job):
            src, obj, cmd = job
            newest = max(newest_dep, os.path.getmtime(src))
            if not os.path.exists(obj) or os.path.getmtime(obj) < newest:
                os.makedirs(os.path.dirname(obj), exist_ok=True)
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
            return obj

        workers = max(1, int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, jobs))

    def _multi_arch_objects(self, ext):
        flags = self._base_flags(ext)
        cxx = os.environ.get("CXX", "c++")
        caps = CPU_CAPABILITIES if IS_X86 else {"DEFAULT": []}
        out_dir = os.path.join(self.build_temp, "multi_arch")
        # All DEFAULT objects first: library-internal inline code (std::vector,
        # std::fill, ...) is emitted in every variant under the same name, and
        # the linker keeps the first copy, which must be the one that runs on
        # any x86-64.
        jobs = []
        for cap, mflags in caps.items():
            for src in MULTI_ARCH_SOURCES:
                # the path in the name: two strategies may both have a cpu_kernel.cpp
                obj = os.path.join(out_dir, f"{src.replace('/', '_')}.{cap}.o")
                cmd = [cxx, "-c", os.path.join(ROOT, src), "-o", obj, "-fPIC",
                       *(["-O1", "-g"] if SANITIZE else ["-O3"]), *SANITIZE, *flags,
                       f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}", *mflags]
                jobs.append((os.path.join(ROOT, src), obj, cmd))
        return self._compile_objects(jobs)

    def _emulated_objects(self, ext):
        """Every .cu file as C++ against the device emulator (csrc/emulate/device.h, included
        first as nvcc includes cuda_runtime.h), instrumented for its access checks."""
        cxx = os.environ.get("CXX", "c++")
        out_dir = os.path.join(self.build_temp, "emulated")
        # -fsanitize=thread without libtsan: the loads and stores call the emulator's hooks
        # (csrc/emulate/tsan_hooks.cpp). ASan and TSan exclude each other: the sanitized
        # build keeps the bounds checks to ASan and runs without the race checks.
        check = SANITIZE or ["-fsanitize=thread", "--param", "tsan-instrument-func-entry-exit=0"]
        jobs = []
        # the kernels, and the emulator's own control kernels (csrc/emulate/*.cu)
        for src in library_sources("cu") + rel(glob.glob(os.path.join(EMULATE_DIR, "*.cu"))):
            obj = os.path.join(out_dir, src.replace("/", "_") + ".o")
            cmd = [cxx, "-x", "c++", "-c", os.path.join(ROOT, src), "-o", obj, "-fPIC",
                   "-fvisibility=hidden", *(["-O1", "-g"] if SANITIZE else ["-O2"]), *check,
                   "-Wno-unknown-pragmas", f"-fmacro-prefix-map={ROOT}/=",
                   # the standard torch compiles the library's own C++ with (ninja's flags)
                   *self._base_flags(ext, default_std="-std=c++20"),
                   "-include", os.path.join(EMULATE_DIR, "device.h")]
            jobs.append((os.path.join(ROOT, src), obj, cmd))
        return self._compile_objects(jobs, header_exts=("h", "cuh"))


def sweep_selected(src):
    """Whether a flash sweep instance is built (ITNET_FLASH_SWEEP)."""
    stem = os.path.splitext(os.path.basename(src))[0]
    return any(p == "all" or fnmatch.fnmatch(stem, p) for p in SWEEP)


def _check_sweep_patterns():
    stems = [os.path.splitext(os.path.basename(s))[0]
             for s in glob.glob(os.path.join(ROOT, SWEEP_DIR, "*.cu"))]
    unmatched = [p for p in SWEEP if p != "all" and not fnmatch.filter(stems, p)]
    if unmatched:
        sys.exit(f"ITNET_FLASH_SWEEP: no file under {SWEEP_DIR} matches {', '.join(unmatched)} "
                 "(\"all\", or comma-separated file-name patterns such as fwd_*_f16)")


_check_sweep_patterns()


def library_sources(ext):
    """csrc's files ending in ext, but the emulator's own (csrc/emulate/) and the flash
    sweep instances not selected."""
    found = rel(glob.glob(os.path.join(CSRC, "**", f"*.{ext}"), recursive=True))
    return [s for s in found if not s.startswith("csrc/emulate/")
            and (not s.startswith(SWEEP_DIR) or sweep_selected(s))]


def extension():
    cpu_sources = [s for s in library_sources("cpp") if s not in MULTI_ARCH_SOURCES
                   and not s.endswith("_cuda.cpp")]
    cuda_sources = library_sources("cu")
    cuda_sources += [s for s in library_sources("cpp") if s.endswith("_cuda.cpp")]
    debug = os.environ.get("ITNET_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O1", "-g"] if SANITIZE else ["-O3"]
    # at::parallel_for is header code: with torch's OpenMP backend it is an
    # `omp parallel` region that runs serially unless compiled with -fopenmp.
    # The library then needs libgomp.so.1, which resolves to the copy torch
    # has already loaded (same soname), so there is one OpenMP runtime.
    omp = ["-fopenmp"] if torch.backends.openmp.is_available() and not IS_MACOS else []
    cxx = opt + ["-fvisibility-inlines-hidden"] + omp + SANITIZE
    kwargs = dict(include_dirs=[CSRC], extra_link_args=omp + SANITIZE)
    if want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not _gpu_visible():
            # torch's arch detection needs a GPU; default to Ampere + Hopper
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        kwargs["include_dirs"] += cuda_include_dirs()
        return cpp_extension.CUDAExtension(
            "itnet_ext._C", cpu_sources + cuda_sources,
            define_macros=[("ITNET_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]
                                if not debug else ["-O0", "-g", "-G"]},
            **kwargs)
    return cpp_extension.CppExtension(
        "itnet_ext._C", cpu_sources, extra_compile_args={"cxx": cxx}, **kwargs)


def emulated_extension():
    """itnet_ext._C_emu: the CUDA entry points (*_cuda.cpp) and what they share with the CPU
    library (argument preparation, schemas), compiled with ITNET_EMULATE against the
    emulator's stand-ins for the CUDA headers (csrc/emulate/shim/, first on the include
    path); the kernels (.cu) are added as objects by Build._emulated_objects."""
    cpu_entries = {f"csrc/{d}/cpu.cpp" for d in ("dense", "sparse", "scan", "lowrank")}
    sources = [s for s in library_sources("cpp")
               if s not in MULTI_ARCH_SOURCES and s not in cpu_entries
               and s != "csrc/python_module.cpp"]
    sources += rel(glob.glob(os.path.join(EMULATE_DIR, "*.cpp")))
    macros = [("ITNET_EMULATE", None), ("ITNET_WITH_CUDA", None), ("ITNET_OPS_NS", "itnet_emu")]
    if not SANITIZE:
        macros.append(("ITNET_EMU_INSTRUMENTED", None))
    opt = ["-O1", "-g"] if SANITIZE else ["-O2"]
    return cpp_extension.CppExtension(
        "itnet_ext._C_emu", sources,
        include_dirs=[os.path.join(EMULATE_DIR, "shim"), CSRC],
        define_macros=macros,
        extra_compile_args={"cxx": opt + ["-fvisibility=hidden", "-fvisibility-inlines-hidden"]
                            + SANITIZE},
        extra_link_args=SANITIZE)


def _gpu_visible():
    try:
        return torch.cuda.is_available() and torch.cuda.device_count() > 0
    except Exception:  # a CUDA build on a machine without a driver
        return False


setup(
    name="itnet_ext",
    version="0.1.0",
    description="ITNet's learnable integral transform as a fused PyTorch operator",
    packages=find_packages(include=["itnet_ext", "itnet_ext.*"]),
    ext_modules=[extension()] + ([emulated_extension()] if EMULATE else []),
    cmdclass={"build_ext": Build.with_options(use_ninja=True)},
    python_requires=">=3.10",
    # Optional: the experiments (progress bars, plots, scikit-learn's digits) and the
    # benchmark-format loaders (PIL images, ModelNet HDF5). The operator needs none of them.
    extras_require={"experiments": ["tqdm", "matplotlib", "scikit-learn", "h5py", "pillow"],
                    # the libraries python -m itnet_ext.bench --peers compares against
                    "peers": ["neuraloperator", "performer-pytorch", "matplotlib"]},
)
