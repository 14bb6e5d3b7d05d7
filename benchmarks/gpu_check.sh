#!/usr/bin/env bash
# Issues 16 ("The GPU path, measured") and 30 (no host synchronisation between logging steps): every GPU measurement
# in one run, under 8 minutes on one H200.
#
#     bash benchmarks/gpu_check.sh OUTDIR
#
# OUTDIR gets summary.md (every figure), results.json (the same as data), steps.tsv (each step's status, seconds
# and limit), progress.log (this script's console) and artifacts.tar.gz (every log, JSON file, TensorBoard event
# file and run directory of the steps, checkpoints and snapshots left out). The steps work in $GPU_CHECK_WORK (a
# fresh temporary folder by default); few files in OUTDIR because the device tool brings back at most 8.
#
# Steps, in this order (benchmarks/gpu/README.md says what each measures and how long it should take): pip, env,
# cuda_tests, sync, fit_default, fit_wikitext2, determinism, amp, peer_2x200, throughput_2x200, peer_2x1500,
# throughput_2x1500. Each runs under `timeout`, within what is left of the whole budget; one that fails or times out
# is recorded as such and the next one runs; what the budget cannot hold is skipped (rerun it with GPU_CHECK_STEPS).
#
# Without CUDA (this project's CPU machines) every GPU step says "skipped: no CUDA" and the script ends in seconds;
# the pip step is skipped wherever jsonargparse and seqstab import already.
#
# Environment:
#   GPU_CHECK_BUDGET=450     seconds for all steps together (then the rest is skipped); packing follows
#   GPU_CHECK_STEPS=a,b      run only these steps (e.g. a rerun of the ones that failed); default: all
#   GPU_CHECK_PIP=auto|1|0   install the wheels: when something is missing (auto), always, never
#   GPU_CHECK_CPU_SMOKE=1    without CUDA, run every step on the CPU at tiny sizes (tests this script; figures
#                            meaningless)
#   GPU_CHECK_WORK=DIR       where the steps write (default: a new mktemp -d folder)
#   SEQSTAB_GPU_DATA=DIR     a folder holding wikitext-2/{train,valid,test}.txt (default: the first of shared/data,
#                            ../shared/data, benchmarks/gpu_wheels/data that has it)
#   SEQSTAB_GPU_PEER=FILE    pytorch/examples' word_language_model/main.py for the peer_* steps (default: the first
#                            of shared/peers, ../shared/peers, benchmarks/gpu_wheels/peers that has
#                            pytorch-examples-word_language_model/main.py)
#   PYTHON=python3           the interpreter
set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUTDIR=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2

PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-450}
RESERVE=15 # seconds kept for the summary and the archive
ONLY=${GPU_CHECK_STEPS:-}
SMOKE=${GPU_CHECK_CPU_SMOKE:-0}
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK/logs" "$WORK/json" "$WORK/tmp" "$WORK/cache"
WORK=$(cd "$WORK" && pwd)
WHEELS=benchmarks/gpu_wheels
START=$SECONDS
: >"$WORK/steps.tsv"
: >"$OUTDIR/progress.log"

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONWARNINGS=ignore::DeprecationWarning
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" # seqstab from this checkout, installed or not
export SEQSTAB_CACHE="$WORK/cache"                   # downloads and token caches: none in ~/.cache
export TMPDIR="$WORK/tmp"

say() { echo "$*" | tee -a "$OUTDIR/progress.log"; }

record() { # record NAME STATUS SECONDS LIMIT
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$WORK/steps.tsv"
    say "   $1: $2 (${3}s)"
}

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

left() { echo $((BUDGET - (SECONDS - START) - RESERVE)); }

run_step() { # run_step NAME LIMIT COMMAND... : the command's output goes to logs/NAME.log
    local name=$1 limit=$2 t0=$SECONDS rc status
    shift 2
    local remaining
    remaining=$(left)
    if ((remaining < 10)); then
        record "$name" "skipped: out of time (budget ${BUDGET}s)" 0 "$limit"
        return 1
    fi
    ((limit > remaining)) && limit=$remaining
    say "== $name (limit ${limit}s, $((SECONDS - START))s elapsed)"
    timeout -k 10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    case $rc in
    0) status=ok ;;
    124 | 137) status="FAILED: timed out after ${limit}s" ;;
    *) status="FAILED: exit $rc" ;;
    esac
    record "$name" "$status" $((SECONDS - t0)) "$limit"
    checkpoint
    return $rc
}

post() { # post NAME COMMAND... : a quick reader after a step (its JSON); a failure is noted in the step's log
    local name=$1
    shift
    timeout -k 5 60 "$@" >>"$WORK/logs/$name.log" 2>&1 || say "   $name: reading its results failed (see its log)"
}

meta() { # WORK/meta.json: what the summary's header says
    M_COMMAND="bash benchmarks/gpu_check.sh $OUTDIR" M_STARTED=$STARTED M_ELAPSED=$((SECONDS - START)) \
        M_BUDGET=$BUDGET M_DEVICE=$DEVICE_LINE M_DATA=$DATA_LINE M_GIT=$GIT_LINE M_WORK=$WORK \
        "$PY" -c 'import json, os, sys
keys = ("command", "started", "elapsed", "budget", "device", "data", "git", "work")
json.dump({k: os.environ["M_" + k.upper()] for k in keys}, open(sys.argv[1], "w"), indent=1)' "$WORK/meta.json"
}

checkpoint() { # the summary and the archive of what is there so far (a run cut short keeps them)
    meta
    timeout 60 "$PY" benchmarks/gpu/summarize.py "$WORK" "$OUTDIR" >>"$WORK/logs/summarize.log" 2>&1 ||
        say "   (summarize failed: see logs/summarize.log in the archive)"
    cp "$WORK/steps.tsv" "$OUTDIR/steps.tsv"
    tar -czf "$OUTDIR/artifacts.tar.gz" -C "$WORK" --exclude='*.ckpt' --exclude='*.pt' --exclude=./cache \
        --exclude=./tmp . 2>/dev/null || true
}

STARTED=$(date '+%Y-%m-%d %H:%M:%S %Z')
DEVICE_LINE="not probed yet" DATA_LINE="not looked for yet"
GIT_LINE=$(git rev-parse --short HEAD 2>/dev/null || echo "no git here")
[ -n "$(git status --porcelain 2>/dev/null)" ] && GIT_LINE="$GIT_LINE (working tree modified)"

# -- 0. packages (the GPU image has no jsonargparse) ----------------------------------------------------------------

imports_ok() { "$PY" -c 'import jsonargparse, docstring_parser, typeshed_client' 2>/dev/null; }
seqstab_installed() { (cd / && "$PY" -c 'import seqstab' 2>/dev/null); }

install_wheels() {
    set -x
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" 'jsonargparse[signatures]>=4.39,<5' 'pyyaml>=6' || return 1
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" 'pytest>=8' 'hypothesis>=6.100' 'tokenizers>=0.19' ||
        echo "optional test packages: not all installed"
    "$PY" -m pip install -q --no-deps --no-index --find-links "$WHEELS" -e . ||
        "$PY" -m pip install -q --no-deps --no-build-isolation -e . ||
        echo "editable install failed: seqstab runs from the checkout (PYTHONPATH)"
    "$PY" -c 'import jsonargparse, docstring_parser, typeshed_client, seqstab; print("imports ok")'
}

if wanted pip; then
    PIP=${GPU_CHECK_PIP:-auto}
    if [ "$PIP" = 0 ]; then
        record pip "skipped: GPU_CHECK_PIP=0" 0
    elif [ "$PIP" != 1 ] && imports_ok && seqstab_installed; then
        record pip "skipped: jsonargparse[signatures] and seqstab import already" 0
    elif [ ! -d "$WHEELS" ]; then
        record pip "FAILED: $WHEELS is missing (bash benchmarks/gpu_wheels.sh here, then carry it)" 0
    else
        export -f install_wheels
        export PY WHEELS
        run_step pip 120 bash -c install_wheels
    fi
fi

# -- device and data ------------------------------------------------------------------------------------------------

CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$CUDA" = 1 ]; then
    DEVICE=cuda ACCEL=gpu
    DEVICE_LINE="cuda: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1)"
elif [ "$SMOKE" = 1 ]; then
    DEVICE=cpu ACCEL=cpu
    DEVICE_LINE="no CUDA: GPU_CHECK_CPU_SMOKE=1, every step on the CPU at tiny sizes (figures meaningless)"
else
    DEVICE="" ACCEL=""
    DEVICE_LINE="no CUDA: the GPU steps are skipped"
fi

DATA=${SEQSTAB_GPU_DATA:-}
if [ -z "$DATA" ]; then
    for d in shared/data ../shared/data "$WHEELS/data"; do
        if [ -f "$d/wikitext-2/train.txt" ]; then
            DATA=$(cd "$d" && pwd)
            break
        fi
    done
fi
if [ -n "$DATA" ] && [ -f "$DATA/wikitext-2/train.txt" ]; then
    WIKI="$DATA/wikitext-2"
    DATA_LINE="WikiText-2 at $WIKI"
else
    WIKI=""
    DATA_LINE="no WikiText-2 (looked in ${DATA:-shared/data, ../shared/data, $WHEELS/data})"
fi
PEER_MAIN=${SEQSTAB_GPU_PEER:-}
if [ -z "$PEER_MAIN" ]; then
    for d in shared/peers ../shared/peers "$WHEELS/peers"; do
        if [ -f "$d/pytorch-examples-word_language_model/main.py" ]; then
            PEER_MAIN="$(cd "$d/pytorch-examples-word_language_model" && pwd)/main.py"
            break
        fi
    done
fi
if [ -n "$PEER_MAIN" ] && [ -f "$PEER_MAIN" ]; then
    PEER_LINE="pytorch/examples word LM at $PEER_MAIN"
else
    PEER_LINE="no pytorch/examples word LM (looked in shared/peers, ../shared/peers, $WHEELS/peers)"
    PEER_MAIN=""
fi
DATA_LINE="$DATA_LINE; $PEER_LINE"
say "device: $DEVICE_LINE"
say "data: $DATA_LINE"
say "work: $WORK; budget ${BUDGET}s"

gpu_step() { # gpu_step NAME: true when NAME is to run on a device; else records why not
    wanted "$1" || return 1
    if [ -z "$DEVICE" ]; then
        record "$1" "skipped: no CUDA" 0
        return 1
    fi
    return 0
}

needs_wiki() {
    if [ -z "$WIKI" ]; then
        record "$1" "skipped: $DATA_LINE" 0
        return 1
    fi
}

needs_peer() {
    if [ -z "$PEER_MAIN" ]; then
        record "$1" "skipped: $PEER_LINE (bash benchmarks/gpu_wheels.sh copies it, then carry benchmarks/gpu_wheels)" 0
        return 1
    fi
}

# Sizes: the GPU run, or tiny ones for the CPU smoke test of this script.
if [ "$SMOKE" = 1 ] && [ "$CUDA" != 1 ]; then
    FIT_STEPS=5 WIKI_BATCHES=5 WIKI_VAL=2
    EXPLODE_ARGS=(--data.seq_len 50 --data.num_train 500 --data.num_val 50 --trainer.max_epochs 2)
    AMP_UPDATES=16 SYNC_ARGS=(--updates 12 --every 5 --tiny) SYNC_LIMIT=300 # 29 fits counted by a dispatch mode
    BENCH_SMALL=(--updates 3 --warmup 2 --rounds 1 --threads 1) BENCH_LARGE=(--updates 2 --warmup 1 --rounds 1 --threads 1 --size 300)
    # the character setting: wt2-33k's cut holds every word type (~33k tokens more, ~1 s an update here)
    PEER_SETTING=char
    PEER_SMALL=(--warmup 2 --updates 4 --every 2 --rounds 1 --threads 1)
    PEER_LARGE=(--warmup 2 --updates 2 --every 2 --rounds 1 --threads 1 --hidden 24)
else
    FIT_STEPS=200 WIKI_BATCHES=300 WIKI_VAL=50 EXPLODE_ARGS=()
    AMP_UPDATES=24 SYNC_ARGS=(--updates 200 --every 50) SYNC_LIMIT=150
    BENCH_SMALL=(--updates 60 --warmup 5 --rounds 2) BENCH_LARGE=(--updates 30 --warmup 5 --rounds 2 --size 1500)
    PEER_SETTING=wt2-33k
    PEER_SMALL=(--warmup 50 --updates 200 --every 50 --rounds 2)
    PEER_LARGE=(--warmup 50 --updates 100 --every 50 --rounds 1 --hidden 1500)
fi
QUIET=(--trainer.enable_progress_bar false --trainer.enable_model_summary false)

# -- the machine ----------------------------------------------------------------------------------------------------

if wanted env; then
    run_step env 60 "$PY" benchmarks/gpu/env_info.py "$WORK/json/env.json"
fi

# -- 1. the CUDA tests and two short fits ---------------------------------------------------------------------------

if gpu_step cuda_tests; then
    # `-k cuda` alone selects nothing: the CUDA tests are test_policies_do_not_synchronise_with_the_host[*] and
    # test_adagc_does_not_synchronise_with_the_host_even_with_a_gradient_missing (tests/test_clipping.py, skipif no
    # CUDA). -rA lists each outcome.
    run_step cuda_tests 120 "$PY" -m pytest -q -rA tests -k "cuda or gpu or synchronise"
fi

# -- 4. host syncs: none between flushes, one read-back per flush (issue 30; early: the design's proof) --------------

if gpu_step sync; then
    run_step sync "$SYNC_LIMIT" "$PY" benchmarks/gpu/sync_check.py "$WORK/json/sync.json" --device "$DEVICE" \
        "${SYNC_ARGS[@]}"
fi

timed_fit() { # timed_fit NAME LIMIT ARGS... : python -m seqstab.train fit ARGS, then its summary JSON
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    run_step "$name" "$limit" "$PY" -m seqstab.train fit --trainer.accelerator "$ACCEL" --trainer.devices 1 \
        --trainer.default_root_dir "$WORK/$name" "${QUIET[@]}" "$@"
    post "$name" "$PY" benchmarks/gpu/fit_summary.py "$WORK/$name" "$WORK/logs/$name.log" "$WORK/json/$name.json" \
        --seconds $((SECONDS - t0))
    checkpoint
}

if gpu_step fit_default; then
    timed_fit fit_default 120 --trainer.max_steps "$FIT_STEPS"
fi
if gpu_step fit_wikitext2 && needs_wiki fit_wikitext2; then
    timed_fit fit_wikitext2 150 --config configs/lm/wikitext2_lstm.yaml --data.data_dir "$WIKI" \
        --data.cache_dir "$WORK/cache" --trainer.max_epochs 1 --trainer.limit_train_batches "$WIKI_BATCHES" \
        --trainer.limit_val_batches "$WIKI_VAL"
fi

# -- 2. determinism: the explode config twice with --trainer.deterministic true, once without -----------------------

explode_runs() { # three runs side by side (small models: the GPU has room), each under its own timeout
    local limit=$1 cfg=configs/explode/adding_rnn.yaml
    local common=(fit --config "$cfg" --trainer.accelerator "$ACCEL" --trainer.devices 1 "${QUIET[@]}" "${EXPLODE_ARGS[@]}")
    CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout -k 5 "$limit" "$PY" -m seqstab.train "${common[@]}" \
        --trainer.deterministic true --trainer.default_root_dir "$WORK/det_a" >"$WORK/logs/det_a.log" 2>&1 &
    local a=$!
    CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout -k 5 "$limit" "$PY" -m seqstab.train "${common[@]}" \
        --trainer.deterministic true --trainer.default_root_dir "$WORK/det_b" >"$WORK/logs/det_b.log" 2>&1 &
    local b=$!
    env -u CUBLAS_WORKSPACE_CONFIG timeout -k 5 "$limit" "$PY" -m seqstab.train "${common[@]}" \
        --trainer.default_root_dir "$WORK/nondet" >"$WORK/logs/nondet.log" 2>&1 &
    local c=$!
    local rc=0 pid
    for pid in $a $b $c; do
        wait "$pid" || rc=$?
    done
    for run in det_a det_b nondet; do
        echo "--- $run: $(grep -E 'seqstab: [0-9]+ of [0-9]+ updates applied|explosion guard' "$WORK/logs/$run.log" | head -3)"
    done
    "$PY" benchmarks/gpu/determinism.py "$WORK/json/determinism.json" "$WORK/det_a" "$WORK/det_b" "$WORK/nondet" ||
        rc=$?
    "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["pass"] else 1)' \
        "$WORK/json/determinism.json" || rc=1
    return $rc
}
if gpu_step determinism; then
    export -f explode_runs
    export PY ACCEL WORK
    # Arrays do not cross `bash -c`: hand them over as words (none holds a space).
    run_step determinism 150 bash -c "QUIET=(${QUIET[*]}); EXPLODE_ARGS=(${EXPLODE_ARGS[*]}); explode_runs 120"
fi

# -- 3. AMP --------------------------------------------------------------------------------------------------------

if gpu_step amp; then
    run_step amp 150 "$PY" benchmarks/gpu/amp_check.py "$WORK/json/amp.json" --work "$WORK/amp" \
        --device "$DEVICE" --updates "$AMP_UPDATES"
fi

# -- 5. throughput: against pytorch/examples' main.py --accel (issue 30), and against a bare loop in-process --------
# peer_*: bench_peer.py runs main.py unmodified and python -m seqstab.train fit -c configs/lm/wikitext2_lstm.yaml as
# programs on the same cut of WikiText-2 (wt2-33k: the full vocabulary; the CPU smoke test: characters), interleaved;
# seqstab with the fused loss on and off (auto is off on a GPU).

peer_step() { # peer_step NAME LIMIT ARGS...
    local name=$1 limit=$2
    shift 2
    run_step "$name" "$limit" "$PY" benchmarks/bench_peer.py --device "$DEVICE" --data-dir "$WIKI" \
        --peer "$PEER_MAIN" --settings "$PEER_SETTING" --fused-loss true --unfused "$@" --json "$WORK/json/$name.json"
}

if gpu_step peer_2x200 && needs_wiki peer_2x200 && needs_peer peer_2x200; then
    peer_step peer_2x200 150 "${PEER_SMALL[@]}"
fi
if gpu_step throughput_2x200 && needs_wiki throughput_2x200; then
    run_step throughput_2x200 150 "$PY" benchmarks/bench_throughput.py --device "$DEVICE" --data-dir "$WIKI" \
        --variants bare,seqstab,seqstab-flow,seqstab+flow,bare+net,seqstab+spectra,seqstab+spectra-on-thread \
        "${BENCH_SMALL[@]}" \
        --json "$WORK/json/throughput_2x200.json"
fi
if gpu_step peer_2x1500 && needs_wiki peer_2x1500 && needs_peer peer_2x1500; then
    peer_step peer_2x1500 120 "${PEER_LARGE[@]}"
fi
if gpu_step throughput_2x1500 && needs_wiki throughput_2x1500; then
    run_step throughput_2x1500 150 "$PY" benchmarks/bench_throughput.py --device "$DEVICE" --data-dir "$WIKI" \
        --variants bare,seqstab,seqstab-flow,seqstab+flow "${BENCH_LARGE[@]}" \
        --json "$WORK/json/throughput_2x1500.json"
fi

# -- the end --------------------------------------------------------------------------------------------------------

checkpoint
say "== done in $((SECONDS - START))s; failed: $(awk -F'\t' '$2 ~ /^FAILED/ {printf "%s ", $1}' "$WORK/steps.tsv")"
say "OUTDIR $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
cat "$OUTDIR/summary.md"
