#!/usr/bin/env bash
# (Re)fill benchmarks/gpu_wheels/ for benchmarks/gpu_check.sh on the GPU machine (Python 3.12, torch 2.11 CUDA 13,
# pytorch-lightning 2.6.6, tensorboard, matplotlib, pytest, hypothesis, tokenizers, pyyaml; no network there).
#
#     bash benchmarks/gpu_wheels.sh        # here, on a machine that reaches PyPI; ~10 MiB of wheels + 13 MiB of data
#
# What it fetches (the folder is git-ignored: it travels with the device tool's `carry`, not in git):
#   * jsonargparse[signatures] and its dependencies (docstring-parser, typeshed-client, PyYAML, typing-extensions):
#     seqstab's CLI needs them and the GPU image lacks them;
#   * setuptools: the build backend of `pip install --no-deps -e .` (pyproject.toml: setuptools>=68), so the editable
#     install can build in pip's isolated environment with --no-index;
#   * pytest, hypothesis, tokenizers (the dev extra's test needs; --no-deps): the image has them, these are the
#     fallback if it does not (gpu_check.sh installs only what is missing);
#   * data/wikitext-2/{train,valid,test}.txt: a copy of ../shared/data/wikitext-2 (the folder beside the checkout
#     does not travel to the GPU machine), read by the wikitext2_lstm fit, bench_throughput.py and bench_peer.py;
#   * peers/pytorch-examples-word_language_model/: a copy of ../shared/peers/pytorch-examples-word_language_model
#     (pytorch/examples' word LM, unmodified: main.py, data.py, model.py, ...), the program bench_peer.py runs
#     against seqstab in gpu_check.sh's peer_* steps.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=benchmarks/gpu_wheels
PY=${PYTHON:-python3}
rm -rf "$DEST"
mkdir -p "$DEST"

# Pins: the versions this repository's venv tests with (jsonargparse) and a setuptools that builds PEP 660 editables.
WITH_DEPS=("jsonargparse[signatures]==4.53.0" "setuptools>=75")
FALLBACK=("pytest>=8" "hypothesis>=6.100" "tokenizers>=0.19,<0.24")
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
    --platform any)

"$PY" -m pip download -q "${TARGET[@]}" -d "$DEST" "${WITH_DEPS[@]}"
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST" "${FALLBACK[@]}"

DATA_SRC=${SEQSTAB_DATA:-../shared/data}
if [ -f "$DATA_SRC/wikitext-2/train.txt" ]; then
    mkdir -p "$DEST/data/wikitext-2"
    cp "$DATA_SRC"/wikitext-2/{train,valid,test}.txt "$DEST/data/wikitext-2/"
else
    echo "gpu_wheels.sh: no $DATA_SRC/wikitext-2/train.txt: the WikiText-2 steps of gpu_check.sh will be skipped" >&2
fi

PEER_NAME=pytorch-examples-word_language_model
PEER_SRC=${SEQSTAB_PEER:-../shared/peers/$PEER_NAME}
if [ -f "$PEER_SRC/main.py" ]; then
    mkdir -p "$DEST/peers/$PEER_NAME"
    cp -r "$PEER_SRC"/. "$DEST/peers/$PEER_NAME/"
    rm -rf "$DEST/peers/$PEER_NAME/__pycache__" "$DEST/peers/$PEER_NAME"/*.pt
else
    echo "gpu_wheels.sh: no $PEER_SRC/main.py: the peer_* steps of gpu_check.sh will be skipped" >&2
fi

ls -1 "$DEST" "$DEST/peers/$PEER_NAME" 2>/dev/null
du -sh "$DEST"
