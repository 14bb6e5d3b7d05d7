"""The machine: Python, torch, CUDA, cuDNN, Lightning, the GPU, the TF32 settings, and the matmul rates it reaches.

    python benchmarks/gpu/env_info.py OUT.json

The rates are float32 ``torch.mm`` of two 8192² matrices with TF32 off and on, and bfloat16, each the best of 10
(CUDA events, after a warm-up): the ceilings the throughput figures are set against beside the datasheet's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys

import _repo  # noqa: F401  (sys.path)
import torch

# NVIDIA H200 (SXM) datasheet, the rates of the H100 SXM: FP32 67 TFLOP/s on the CUDA cores; TF32 tensor cores
# 989 TFLOP/s and BF16 1,979 TFLOP/s *with 2:4 sparsity*, i.e. 494.5 and 989.5 dense. (/work/.library/device/H200.md
# quotes the same: "dense bf16 about 990 TFLOP/s, plain fp32 about 67".)
DATASHEET_TFLOPS = {"fp32": 67.0, "tf32_dense": 494.5, "bf16_dense": 989.5}


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi: {e}"


def mm_tflops(dtype: torch.dtype, tf32: bool, n: int = 8192, repeats: int = 10) -> float:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        import _common  # after _repo put benchmarks/ on sys.path

        return _common.cuda_matmul_gflops(n, repeats, dtype) / 1e3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    args = parser.parse_args()
    info = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "versions": {
            name: version(name)
            for name in (
                "pytorch-lightning",
                "lightning",
                "jsonargparse",
                "docstring-parser",
                "typeshed-client",
                "tensorboard",
                "numpy",
                "pytest",
                "hypothesis",
                "tokenizers",
                "PyYAML",
                "matplotlib",
                "seqstab",
            )
        },
        "tf32": {
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "datasheet_tflops": DATASHEET_TFLOPS,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        }
        info["nvidia_smi"] = nvidia_smi()
        info["measured_tflops"] = {
            "fp32_mm_tf32_off": mm_tflops(torch.float32, tf32=False),
            "fp32_mm_tf32_on": mm_tflops(torch.float32, tf32=True),
            "bf16_mm": mm_tflops(torch.bfloat16, tf32=False),
        }
    _repo.write_json(args.out, info)
    for key, value in info.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
