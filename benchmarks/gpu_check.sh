#!/usr/bin/env bash
# The whole GPU check in one command, within the 600 s a GPU session's command may run
# (issues 5 and 13; benchmarks/GPU.md says what each section checks):
#
#   bash benchmarks/gpu_check.sh [--quick] [SECTIONS]
#   bash benchmarks/gpu_check.sh prepare [PACKAGE ...]  # = gpu_prepare.sh: on a machine WITH network,
#                                                       # fills gpu_wheels/ for the GPU machine
#
# SECTIONS: comma-separated, default all = prep,env,tests,diff,train,sanitize,kernels,speed,suite
# (prep runs whatever is asked: the rest needs it). Budgets in seconds (T_PREP=... to change one):
#
#   prep      20  installs, offline, what this python lacks (lark, hypothesis, ...) from gpu_wheels/,
#                 and dlc itself: the prepared wheel where it matches the working tree, else the tree
#                 through a link. Names precisely what is missing, and stops (exit 2) if dlc cannot run.
#   env       30  versions, nvidia-smi, what CuPy, dlc and PyTorch see, compute-sanitizer
#   tests     90  pytest tests/test_cuda.py: every test model and example against the interpreter
#   diff      60  dlc diff --backends interp,cuda --batch 5 on every example (cuda diverges: again with emu);
#                 then at --precision tf32 and bf16 on mlp and lenet (the tensor-core kernels)
#   train     40  dlc run examples/mlp.dln on interp, cuda, cuda --cuda-graph: held-out accuracies;
#                 data parallel on cuda through NCCL (benchmarks/gpu_dp.py: K = 1 on a one-GPU machine)
#   sanitize 100  compute-sanitizer memcheck 35 (batch 7), racecheck 40 (batch 3), synccheck 25 (batch 7)
#                 on gpu_step.py, one step of every example, the smallest first
#   kernels   30  the MLP's kernels: bandwidth and FLOP/s against a device copy and cuBLAS
#   speed    120  step times per example and batch: dlc-graph, eager, dlc (one process each); then
#                 dlc-graph and eager at tf32 (PyTorch: allow_tf32) and bf16 (PyTorch: autocast)
#   suite     60  the rest of pytest, with whatever time the sections before it left
#   total    550  = BUDGET (the default: the sum of the sections asked for), 50 s short of 600 for
#                 start-up, the summary and any overshoot
#
# Every step has a time limit within its section's and the whole run's budget; a step that does
# not fit is "skipped: no time left in the budget". Without a GPU it says so, skips the GPU
# sections and runs the CPU-side ones instead (section cpu). Tools it lacks (compute-sanitizer,
# PyTorch or PyTorch's GPU) make their rows "skipped: <reason>".
#
# Results, as they come, in $OUT (default /tmp/dlc-gpu-check): gpu-DATE.txt (gpu-DATE-TAG.txt) gets
# the budget table at the start and a row per section (ok / skipped / FAILED) as each ends, so a
# run cut off still leaves a table; then the line "end: exit N ..." and the full summary (every
# check, accuracies, speed and kernel tables). Also full.log, env.json, speed.jsonl, kernels.json,
# logs.tar.gz (every step's own log).
#
# Exit status: 0 no FAILED row (every section ok or skipped), 1 some row FAILED, 2 the preparation
# failed (a module dlc needs is missing and gpu_wheels/ has no wheel for it; the message says which
# and what to run) or the arguments are wrong, 124 stopped by a signal.
#
# --quick (or DLC_GPU_CHECK_QUICK=1): a smoke run of every section's plumbing, a minute or so:
# a few tests, diff and speed on xor (and mlp), one epoch, small kernels, no suite.
# DLC_FAKE_CUPY=1: a dry run without a GPU, on the CuPy stand-in of tests/fake_cupy.py (kernels on
# the emulator; PyTorch on the CPU; numbers meaningless; sanitize runs gpu_step.py without the
# sanitizer); ignored where a real CuPy is installed.
# tests/test_gpu_check.py runs `DLC_FAKE_CUPY=1 bash benchmarks/gpu_check.sh --quick`.
#
# Other knobs: PYTHON (default python, else python3), GPU_WHEELS (default gpu_wheels), BUDGET,
# KEEP_WORK=1 (keep the work folder under /tmp; its logs are in logs.tar.gz anyway),
# TAG (result file name), DIFF_EXAMPLES, DIFF_BATCH, DIFF_BACKENDS, DIFF_PRECISIONS (default "tf32
# bf16"; none in quick mode), DIFF_PRECISION_EXAMPLES (default "mlp lenet"), TRAIN_EPOCHS, SAN_TOOLS
# (default "memcheck racecheck synccheck"), SAN_EXAMPLES, RACE_BATCH, KERNEL_ARGS, SPEED_IMPLS
# (default "dlc-graph eager dlc"; add compile-ro compile for torch.compile, warmed up in the
# background by WARM_JOBS processes), SPEED_PRECISIONS (default "tf32 bf16", quick mode "bf16", ""
# for none: dlc-graph and eager again at each, after each example and batch's fp32 rows),
# SPEED_EXAMPLES, SPEED_BATCHES, SPEED_ARGS, GPU_CHECK_FORCE=1
# (run the GPU sections even where no GPU is found).
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
ALL=prep,env,tests,diff,train,sanitize,kernels,speed,suite
case "${1:-}" in
    prepare) shift; exec bash benchmarks/gpu_prepare.sh "$@";;
    -h|--help) sed -n '2,/^set -u$/{/^set -u$/d;s/^# \{0,1\}//;p;}' "$0"; exit 0;;
esac
QUICK=${DLC_GPU_CHECK_QUICK:-0}
SECTIONS=all
for a in "$@"; do
    case $a in
        --quick) QUICK=1;;
        -*) echo "gpu_check.sh: unknown option $a (see --help)" >&2; exit 2;;
        *) SECTIONS=$a;;
    esac
done
[ "$SECTIONS" = all ] && SECTIONS=$ALL
for s in ${SECTIONS//,/ }; do
    case ",$ALL,cpu," in *",$s,"*) ;; *) echo "gpu_check.sh: unknown section '$s' (known: $ALL)" >&2; exit 2;; esac
done
case ",$SECTIONS," in *,prep,*) ;; *) SECTIONS=prep,$SECTIONS;; esac

declare -A T=([prep]=${T_PREP:-20} [env]=${T_ENV:-30} [tests]=${T_TESTS:-90} [diff]=${T_DIFF:-60}
              [train]=${T_TRAIN:-40} [sanitize]=${T_SANITIZE:-100} [kernels]=${T_KERNELS:-30}
              [speed]=${T_SPEED:-120} [suite]=${T_SUITE:-60} [cpu]=${T_CPU:-240})
declare -A WHAT=([prep]="install what this python lacks from gpu_wheels/; dlc from the working tree"
                 [env]="versions, nvidia-smi, what CuPy, dlc and PyTorch see"
                 [tests]="pytest tests/test_cuda.py on the GPU"
                 [diff]="dlc diff on every example"
                 [train]="examples/mlp.dln on interp, cuda, cuda-graph: accuracies"
                 [sanitize]="compute-sanitizer on one step of every example"
                 [kernels]="the MLP's kernels against a device copy and cuBLAS"
                 [speed]="step times against PyTorch"
                 [suite]="the rest of pytest, and what the sections before left"
                 [cpu]="without a GPU: PyTorch twins, the cuda backend on the CuPy stand-in")
has() { case ",$SECTIONS," in *",$1,"*) return 0;; *) return 1;; esac; }
SUM=0
for s in ${ALL//,/ }; do has "$s" && SUM=$(( SUM + T[$s] )); done
BUDGET=${BUDGET:-$SUM}
LIMIT=600    # what one command of a GPU session may run

START=$(date +%s)
DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-/tmp/dlc-gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/dlc-gpu-work.XXXXXX)
mkdir -p "$WORK/logs"
LOG=$OUT/full.log
: > "$LOG"
RESULT="$OUT/gpu-$DATE${TAG:+-$TAG}.txt"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export DLC_CACHE_DIR=${DLC_CACHE_DIR:-/tmp/dlc-cache}                 # emu libraries, shared by all steps
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/dlc-inductor-cache}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/dlc-triton-cache}
export CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0                           # fp32 everywhere
: > "$WORK/status.tsv"

now() { date +%s; }
elapsed() { echo $(( $(now) - START )); }
status() {  # SECTION ITEM STATUS DETAIL; STATUS is ok, skipped or FAILED
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" | tr -d '\r' >> "$WORK/status.tsv"
    printf '[%4ss] %-9s %-30s %-7s %s\n' "$(elapsed)" "$1" "$2" "$3" "${4:-}"
}

# -- the budget table, and the result file's head --------------------------------------------
budget_table() {
    local s
    echo "budget (s)"
    for s in ${ALL//,/ }; do has "$s" && printf '  %-9s %4s  %s\n' "$s" "${T[$s]}" "${WHAT[$s]}"; done
    printf '  %-9s %4s  %s\n' total "$BUDGET" "overall cap (BUDGET), of the ${LIMIT} s a GPU session's command may run"
    (( BUDGET > LIMIT - 30 )) && echo "  WARNING: less than 30 s of the ${LIMIT} s left for start-up and the summary"
    return 0
}
PY=${PYTHON:-$(command -v python || command -v python3 || echo python3)}
DRY=0
if [ "${DLC_FAKE_CUPY:-0}" = 1 ]; then   # (no dlc imported here: prep has not run yet)
    if timeout 60 "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('cupy') is None)" 2>/dev/null; then
        echo "DLC_FAKE_CUPY=1 ignored: a real CuPy is installed here, and the stand-in never replaces it"
    else
        DRY=1
    fi
fi
MODE=""
[ "$QUICK" = 1 ] && MODE="; quick mode (a smoke run: few tests, small sizes, no suite)"
[ "$DRY" = 1 ] && MODE="$MODE; DRY RUN: CuPy is the stand-in of tests/fake_cupy.py (kernels on the emulator), PyTorch on the CPU, numbers meaningless"
{
    echo "dlc GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
    echo "command: bash benchmarks/gpu_check.sh $*"
    echo "sections: $SECTIONS$MODE"
    budget_table
    echo
    printf '%-9s %-8s %11s  %s\n' section status used/budget detail
} > "$RESULT"
echo "dlc GPU check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), sections $SECTIONS$MODE"
echo "repo $REPO, results in $OUT (the table: $RESULT), work files in $WORK"
budget_table

# -- sections: a row in the result file as each ends ---------------------------------------------
SEC=""
SEC_END=0
HEADLINE=""   # what a section's row says after its counts, where it has more than one check
begin() {  # NAME: ends the section before; this one runs within its budget (suite: all that is left)
    end_section
    SEC=$1
    SEC_T0=$(now)
    SEC_BUDGET=${T[$1]}
    if [ "$1" = suite ]; then SEC_BUDGET=$(( BUDGET - $(elapsed) )); fi
    SEC_END=$(( SEC_T0 + SEC_BUDGET ))
    echo
    echo "=== $1 (budget ${SEC_BUDGET}s, $(( BUDGET - $(elapsed) ))s left overall) ==="
}
row() {  # SECTION STATUS USED BUDGET DETAIL: one line of the section table
    printf '%-9s %-8s %5ss/%-5s %s\n' "$1" "$2" "$3" "$4" "$5" | cut -c1-400 >> "$RESULT"
}
end_section() {  # the row of the section that ran: FAILED if a check failed, ok if one passed, else skipped
    [ -n "$SEC" ] || return 0
    local r
    r=$(awk -F'\t' -v s="$SEC" '$1 == s { c[$3]++; d = $2 ": " $4
            if ($3 == "FAILED" && f == "") f = d; if ($3 == "skipped" && k == "") k = d; if ($3 == "ok" && o == "") o = d }
        END { n = c["ok"] + c["skipped"] + c["FAILED"]
              st = c["FAILED"] ? "FAILED" : (c["ok"] ? "ok" : "skipped")
              counts = (c["ok"] + 0) " ok, " (c["skipped"] + 0) " skipped, " (c["FAILED"] + 0) " FAILED"
              if (n == 0) d = "nothing ran"
              else if (n == 1) d = f o k
              else if (st == "FAILED") d = counts "; first: " f
              else if (st == "skipped") d = k
              else d = counts (h != "" ? "; " h : (c["skipped"] ? "; " k : ""))
              printf "%s\t%s", st, d }' h="$HEADLINE" "$WORK/status.tsv")
    row "$SEC" "${r%%	*}" "$(( $(now) - SEC_T0 ))" "$SEC_BUDGET" "${r#*	}"
    SEC=""
    HEADLINE=""
}
skip_section() {  # NAME REASON: a section that does not run
    end_section
    status "$1" "(section)" skipped "$2"
    row "$1" skipped 0 "${T[$1]}" "$2"
}
left() {  # seconds left in this section and overall, whichever is less
    local a=$(( SEC_END - $(now) )) b=$(( START + BUDGET - $(now) ))
    echo $(( a < b ? a : b ))
}
# limited NAME TIMEOUT CMD...: CMD with a time limit (within what is left), its output in logs/SEC-NAME.log;
# sets RC (125: no time left to start it) and STEP_LOG, STEP_T (the limit), STEP_DT (seconds it ran)
RC=0
limited() {
    local name=$1 t=$2; shift 2
    local l; l=$(left)
    STEP_LOG="$WORK/logs/$SEC-$name.log"
    STEP_DT=0
    if (( l < 8 )); then RC=125; : > "$STEP_LOG"; return 125; fi
    (( t > l - 3 )) && t=$(( l - 3 ))
    STEP_T=$t
    local t0; t0=$(now)
    timeout -k 5 "$t" "$@" > "$STEP_LOG" 2>&1
    RC=$?
    STEP_DT=$(( $(now) - t0 ))
    return $RC
}
lastlines() { grep -v '^\s*$' "$1" | tail -n "${2:-2}" | tr '\n' ' ' | cut -c1-220; }
# run NAME TIMEOUT CMD...: limited, then a row: ok (seconds), FAILED (why), skipped (no time left)
run() {
    local name=$1
    limited "$@"
    if [ $RC = 0 ]; then status "$SEC" "$name" ok "${STEP_DT}s"
    elif [ $RC = 125 ]; then status "$SEC" "$name" skipped "no time left in the budget"
    elif [ $RC = 124 ] || [ $RC = 137 ]; then status "$SEC" "$name" FAILED "timed out after ${STEP_T}s"
    else status "$SEC" "$name" FAILED "exit $RC: $(lastlines "$STEP_LOG")"
    fi
    return $RC
}
# pytest_run NAME TIMEOUT PYTEST-ARGS...: a row with pytest's own summary line. CUT_OFF_OK=1: a run
# the budget cuts off before any failure is "skipped" with what passed so far, not FAILED.
pytest_run() {
    local name=$1 t=$2; shift 2
    limited "$name" "$t" "$PY" -m pytest -q -p no:cacheprovider -rs "$@"
    local summary; summary=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s' "$STEP_LOG" | tail -n 1 | tr -d '=' | sed 's/^ *//')
    if [ $RC = 0 ]; then status "$SEC" "$name" ok "${summary:-${STEP_DT}s}"
    elif [ $RC = 125 ]; then status "$SEC" "$name" skipped "no time left in the budget"
    elif [ $RC = 124 ] || [ $RC = 137 ]; then
        local prog passed bad
        prog=$(grep -E '^[.sxFEX]+( +\[ *[0-9]+%\])?$' "$STEP_LOG" | tr -d ' []%0-9\n')
        passed=$(printf '%s' "$prog" | tr -cd '.' | wc -c)
        bad=$(printf '%s' "$prog" | tr -cd 'FE' | wc -c)
        if [ "${CUT_OFF_OK:-0}" = 1 ] && [ "$bad" = 0 ]; then
            status "$SEC" "$name" skipped "cut off by the budget after ${STEP_T}s: $passed passed, none failed so far"
        else
            status "$SEC" "$name" FAILED "timed out after ${STEP_T}s: $passed passed, $bad failed or errors so far"
        fi
    else
        status "$SEC" "$name" FAILED "exit $RC: ${summary:-$(lastlines "$STEP_LOG")} $(grep -E '^(FAILED|ERROR) ' "$STEP_LOG" | head -n 2 | tr '\n' ' ' | cut -c1-160)"
    fi
    return $RC
}
probe() {  # CMD...: the last line CMD prints, within what is left of the section (5 to 30 s)
    local t; t=$(left)
    (( t > 30 )) && t=30
    (( t < 5 )) && t=5
    timeout -k 5 "$t" "$@" 2>&1 | grep -v '^\s*$' | tail -n 1 | cut -c1-200
}

WARM_PIDS=()
warm_todo() {  # the compiled configurations without a warm-up record yet
    local impl b ex
    for impl in compile-ro compile; do
        case " $SPEED_IMPLS " in *" $impl "*) ;; *) continue;; esac
        for b in $SPEED_BATCHES; do for ex in $SPEED_EXAMPLES; do
            grep -qF "\"impl\": \"$impl\", \"example\": \"$ex\", \"batch\": $b," "$WORK/warm.jsonl" 2>/dev/null \
                || echo "$impl $ex $b"
        done; done
    done
}
warm_start() {  # PARALLEL
    local n=$1 k
    [ ${#WARM_PIDS[@]} = 0 ] || return 0
    [ "${TORCH_OK:-0}" = 1 ] && [ "$n" -gt 0 ] || return 0
    warm_todo > "$WORK/warm.jobs"
    [ -s "$WORK/warm.jobs" ] || return 0
    rm -f "$WORK/warm.stop"
    for k in $(seq 0 $(( n - 1 ))); do
        (
            i=0
            while read -r impl ex b; do
                i=$(( i + 1 ))
                (( (i - 1) % n == k )) || continue
                [ -e "$WORK/warm.stop" ] && break
                TORCHINDUCTOR_COMPILE_THREADS=4 timeout -k 5 180 "$PY" benchmarks/bench_gpu.py step --warm-only \
                    --device "$TORCH_DEVICE" --impl "$impl" --example "$ex" --batch "$b" --json "$WORK/warm.jsonl" \
                    >> "$WORK/logs/warm-$k.log" 2>&1 &
                echo $! > "$WORK/warm-$k.pid"
                wait $!
            done < "$WORK/warm.jobs"
        ) &
        WARM_PIDS+=($!)
    done
    echo "torch.compile cache warm-up: $(wc -l < "$WORK/warm.jobs") configurations in $n background processes"
}
stop_warm() {
    local f p
    [ ${#WARM_PIDS[@]} = 0 ] && return 0
    touch "$WORK/warm.stop"
    for f in "$WORK"/warm-*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    for p in "${WARM_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    WARM_PIDS=()
    rm -f "$WORK"/warm-*.pid
    echo "torch.compile warm-up stopped: $(grep -c '"warm_only"' "$WORK/warm.jsonl" 2>/dev/null || echo 0) configurations compiled so far"
}
warm_wait() {  # SECONDS: let the warm-up finish, for at most this long, then stop it
    local until=$(( $(now) + $1 )) p
    while (( $(now) < until )); do
        local alive=0
        for p in "${WARM_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 2
    done
    stop_warm
}
finish() {  # CODE (2: preparation failed): the end line, the summary, the logs; exits
    local code=$1
    stop_warm
    end_section
    local fails; fails=$(awk -F'\t' '$3 == "FAILED"' "$WORK/status.tsv" | wc -l)
    [ "$code" = 0 ] && [ "$fails" -gt 0 ] && code=1
    local counts
    counts=$(awk '/^section +status/ {t = 1; next} t && NF >= 2 {c[$2]++}
                  END {printf "%d ok, %d skipped, %d FAILED", c["ok"], c["skipped"], c["FAILED"]}' "$RESULT")
    echo
    echo "=== summary ($(elapsed)s) ==="
    {
        echo "end: exit $code ($counts sections; $fails checks FAILED) after $(elapsed)s of the ${BUDGET}s budget"
        echo
        timeout -k 5 60 "$PY" benchmarks/bench_gpu.py summary --work "$WORK" 2>&1 || echo "summary FAILED"
    } >> "$RESULT"
    for f in env.json speed.jsonl kernels.json; do [ -e "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"; done
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" . 2>/dev/null || true
    if [ "${HAVE_GPU:-0}" = 1 ] && [ "$DRY" != 1 ] && [ -d benchmarks/results ]; then cp "$RESULT" benchmarks/results/; fi
    cat "$RESULT"
    echo
    echo "=== not ok (also above) ==="
    awk -F'\t' '$3 != "ok" {printf "  %-9s %-30s %-7s %s\n", $1, $2, $3, substr($4, 1, 150)}' "$WORK/status.tsv" | head -n 40
    grep -E "^target|^FAILED" "$RESULT" | cut -c1-170 | head -n 20
    echo "results: $RESULT (commit as benchmarks/results/$(basename "$RESULT")), full log $LOG, logs $OUT/logs.tar.gz"
    echo "exit status $code (0 nothing FAILED, 1 something FAILED, 2 the preparation failed)"
    [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
    exit "$code"
}
on_signal() {  # a run cut off still leaves its table (tee may be gone: write to the log itself)
    trap - TERM INT HUP PIPE
    exec >> "$LOG" 2>&1
    [ -n "$SEC" ] && status "$SEC" "(cut off)" FAILED "stopped by a signal after $(elapsed)s"
    stop_warm
    end_section
    echo "end: stopped by a signal after $(elapsed)s" >> "$RESULT"
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" . 2>/dev/null || true
    [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
    exit 124
}
# PIPE too: when the process group is killed, tee goes with it, and this shell's next write to
# stdout (before the TERM trap has run) would otherwise kill it silently, leaving no table
trap on_signal TERM INT HUP PIPE

# -- prep: what this python lacks, from gpu_wheels/; dlc itself --------------------------------
# Nothing here imports dlc before it is known to be importable, so a missing lark reads as
# "lark is missing", not as "no GPU".
SITE=$WORK/site
mkdir -p "$SITE"
PP=$SITE
[ $DRY = 1 ] && PP=$PP:$REPO/tests/fake_cupy_path
export PYTHONPATH=$PP${PYTHONPATH:+:$PYTHONPATH}
export PATH=$SITE/bin:$PATH    # the `dlc` command of what prep installs
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
if [ $DRY = 1 ]; then  # every section without a GPU, on the stand-in
    TORCH_DEVICE=cpu
    GPU_CHECK_FORCE=1
fi

begin prep
GPU_WHEELS=${GPU_WHEELS:-$REPO/gpu_wheels}
if ! command -v "$PY" > /dev/null; then
    status prep python FAILED "$PY not found (PYTHON=... picks the interpreter)"
    finish 2
fi
limited deps 60 "$PY" benchmarks/bench_gpu.py deps --wheels "$GPU_WHEELS" --site "$SITE" --repo "$REPO"
DEPS_RC=$RC
sed 's/^/  /' "$STEP_LOG"
DEPS_LAST=$(grep -v '^\s*$' "$STEP_LOG" | tail -n 1 | cut -c1-400)
case $DEPS_RC in
    0) status prep "dlc and its dependencies" ok "$(grep -E '^  dlc ' "$STEP_LOG" | sed 's/^  dlc *ok *//' | cut -c1-200)";;
    1) status prep "test tools" FAILED "${DEPS_LAST#MISSING: }";;
    2) status prep "dlc and its dependencies" FAILED "${DEPS_LAST#MISSING: }";;
    *) status prep "dlc and its dependencies" FAILED "exit $DEPS_RC: $(lastlines "$STEP_LOG")";;
esac
if [ $DEPS_RC != 0 ] && [ $DEPS_RC != 1 ]; then
    echo
    echo "PREPARATION FAILED: ${DEPS_LAST#MISSING: }"
    end_section
    for s in ${ALL//,/ }; do [ "$s" != prep ] && has "$s" && skip_section "$s" "the preparation failed (see prep)"; done
    finish 2
fi

# -- environment ---------------------------------------------------------------------------------
HAVE_GPU=0
if has env || has tests || has diff || has train || has sanitize || has kernels || has speed || has suite; then
    begin env
    SMI_GPUS=0
    if command -v nvidia-smi > /dev/null; then
        timeout -k 5 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu \
            --format=csv,noheader > "$WORK/nvidia-smi.txt" 2>&1 || true
        timeout -k 5 20 nvidia-smi > "$WORK/logs/env-nvidia-smi.log" 2>&1 || true
        SMI_GPUS=$(timeout -k 5 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
        status env nvidia-smi "$([ "$SMI_GPUS" -gt 0 ] && echo ok || echo FAILED)" "$SMI_GPUS GPU(s): $(head -n 1 "$WORK/nvidia-smi.txt")"
    else
        echo "no nvidia-smi" > "$WORK/nvidia-smi.txt"
        status env nvidia-smi skipped "not found"
    fi
    run versions 40 "$PY" benchmarks/bench_gpu.py env --json "$WORK/env.json"
    cat "$STEP_LOG"
    CUPY_SAYS=$(probe "$PY" -c "
import cupy
rt = cupy.cuda.runtime
n = rt.getDeviceCount()
name = rt.getDeviceProperties(0)['name'] if n else ''
name = name.decode() if isinstance(name, bytes) else name
print(f'CuPy {cupy.__version__} sees {n} GPU(s)' + (f': {name}' if n else ''))")
    DLC_SAYS=$(probe "$PY" -c "from dlc.runtime.cuda import cuda_available as c; ok, why = c(); print(('yes ' if ok else 'no ') + why)")
    TORCH_SAYS=$(probe "$PY" -c "import torch; print(int(torch.cuda.is_available()), torch.__version__)")
    SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
    case $CUPY_SAYS in "CuPy "*" sees "[1-9]*) status env CuPy ok "$CUPY_SAYS";; *) status env CuPy skipped "$CUPY_SAYS";; esac
    HEADLINE="cuda backend: $DLC_SAYS"
    case $DLC_SAYS in
        yes*) HAVE_GPU=1; status env "GPU for dlc's cuda backend" ok "${DLC_SAYS#yes }";;
        *)  if [ "$SMI_GPUS" -gt 0 ] || [[ $CUPY_SAYS == *" sees "[1-9]* ]]; then
                status env "GPU for dlc's cuda backend" FAILED "a GPU is here, but the cuda backend cannot use it: ${DLC_SAYS#no }"
            else
                status env "GPU for dlc's cuda backend" skipped "no GPU: ${DLC_SAYS#no }"
            fi;;
    esac
    TORCH_OK=0
    case $TORCH_SAYS in
        "1 "*) TORCH_OK=1; status env PyTorch ok "${TORCH_SAYS#1 }, sees the GPU";;
        "0 "*) if [ "$TORCH_DEVICE" = cpu ]; then TORCH_OK=1; TORCH_WHY=""
                   status env PyTorch ok "${TORCH_SAYS#0 } on the CPU (dry run)"
               else TORCH_WHY="PyTorch ${TORCH_SAYS#0 } sees no GPU"; status env PyTorch skipped "$TORCH_WHY"; fi;;
        *) TORCH_WHY="PyTorch cannot be imported: $TORCH_SAYS"; status env PyTorch skipped "$TORCH_WHY";;
    esac
    if [ -n "$SANITIZER" ]; then status env compute-sanitizer ok "$SANITIZER"
    else status env compute-sanitizer skipped "not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/*)"; fi
    if [ $HAVE_GPU = 0 ] && [ "${GPU_CHECK_FORCE:-0}" != 1 ]; then
        echo
        echo "NO GPU for the cuda backend: ${DLC_SAYS#no }"
        echo "The GPU sections are skipped; the parts that need none run instead (section cpu)."
        end_section
        for s in tests diff train sanitize kernels speed suite; do has "$s" && skip_section "$s" "no GPU for the cuda backend (see env)"; done
        SECTIONS=prep,env,cpu
    fi
fi

# -- torch.compile cache warm-up (only where SPEED_IMPLS names compile or compile-ro) --------
# torch.compile spends 10-60 s per configuration compiling. These untimed processes fill the
# Inductor and Triton caches (shared through TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR), in the
# background while the correctness sections run (they time nothing, so sharing the GPU is harmless),
# and again before the compiled configurations are timed, with nothing timed beside them.
if [ "$QUICK" = 1 ]; then
    SPEED_EXAMPLES=${SPEED_EXAMPLES:-xor}
    SPEED_BATCHES=${SPEED_BATCHES:-16}
    SPEED_ARGS=${SPEED_ARGS:-"--warmup 2 --blocks 2 --steps 2"}
    SPEED_PRECISIONS=${SPEED_PRECISIONS-bf16}
fi
SPEED_EXAMPLES=${SPEED_EXAMPLES:-"mlp lenet inception deep_mlp logreg xor adding_lstm"}   # what matters most first (adding_lstm: against cuDNN's nn.LSTM)
SPEED_BATCHES=${SPEED_BATCHES:-"128 1024"}
SPEED_IMPLS=${SPEED_IMPLS:-"dlc-graph eager dlc"}
SPEED_ARGS=${SPEED_ARGS:-}
SPEED_PRECISIONS=${SPEED_PRECISIONS-tf32 bf16}
has speed && warm_start "${WARM_JOBS:-2}"

# -- CPU-only parts (no GPU here) ----------------------------------------------------------------
if has cpu; then
    begin cpu
    pytest_run torch-twins 120 tests/test_torch_equivalents.py
    pytest_run cuda-bookkeeping 120 tests/test_cuda.py
    limited gpu_step 60 "$PY" benchmarks/gpu_step.py mlp
    if grep -q "cuda backend unavailable" "$STEP_LOG"; then
        status cpu "gpu_step (no GPU)" ok "reports: $(head -n 1 "$STEP_LOG" | cut -c1-150)"
    else
        status cpu "gpu_step (no GPU)" FAILED "$(lastlines "$STEP_LOG")"
    fi
fi

# -- 1. correctness: the cuda test suite on the GPU -----------------------------------------------
if has tests; then
    begin tests
    K=()
    [ "$QUICK" = 1 ] && K=(-k "${TESTS_K:-test_api_backend_cuda or test_example_matches_interpreter and xor}")
    pytest_run test_cuda 85 --maxfail=10 "${K[@]}" tests/test_cuda.py
    if grep -q "SKIPPED.*cuda backend unavailable" "$STEP_LOG"; then
        status tests "test_cuda GPU tests" FAILED "skipped: the tests did not see the GPU"
    fi
fi

# -- 1. correctness: dlc diff on every example -----------------------------------------------------
if has diff; then
    begin diff
    DIFF_BACKENDS=${DIFF_BACKENDS:-interp,cuda}
    if [ "$QUICK" = 1 ]; then DIFF_EXAMPLES=${DIFF_EXAMPLES:-"xor mlp"}; fi
    DIFF_EXAMPLES=${DIFF_EXAMPLES:-$(for f in examples/*.dln; do basename "$f" .dln; done)}
    diff_one() {  # NAME BACKENDS EXAMPLE [PRECISION]: a row with dlc diff's verdict
        limited "$1" 20 "$PY" -m dlc.cli diff "examples/$3.dln" --backends "$2" --batch "${DIFF_BATCH:-5}" \
            --precision "${4:-fp32}"
        local said; said=$(grep -E '^(emu|cuda): skipped|^result' "$STEP_LOG" | tr '\n' ' ' | sed 's/ *$//')
        case $RC in
            0) status diff "$1" ok "${said#result: } (${STEP_DT}s)";;
            125) status diff "$1" skipped "no time left in the budget";;
            124|137) status diff "$1" FAILED "timed out after ${STEP_T}s";;
            1) status diff "$1" FAILED "$said: $(grep -E 'DIVERG|first' "$STEP_LOG" | head -n 1 | cut -c1-150)";;
            *) status diff "$1" FAILED "exit $RC: $(lastlines "$STEP_LOG")";;
        esac
    }
    agree=()
    for ex in $DIFF_EXAMPLES; do
        diff_one "$ex" "$DIFF_BACKENDS" "$ex" && agree+=("$ex")
        if [ $RC = 1 ] && [[ $DIFF_BACKENDS != *emu* ]]; then  # cuda diverges: does emu, on the same generated source?
            diff_one "$ex+emu" interp,emu,cuda "$ex"
        fi
    done
    # the tensor-core kernels against the interpreter's exact rounding (docs/precision.md)
    [ "$QUICK" = 1 ] && DIFF_PRECISIONS=${DIFF_PRECISIONS-}
    for p in ${DIFF_PRECISIONS-tf32 bf16}; do
        for ex in ${DIFF_PRECISION_EXAMPLES:-mlp lenet}; do
            diff_one "$ex@$p" "$DIFF_BACKENDS" "$ex" "$p" && agree+=("$ex@$p")
        done
    done
    HEADLINE="$DIFF_BACKENDS agree at batch ${DIFF_BATCH:-5} on: ${agree[*]:-none}"
fi

# -- 1. correctness: a short training run, GPU against CPU --------------------------------------
if has train; then
    begin train
    [ "$QUICK" = 1 ] && TRAIN_EPOCHS=${TRAIN_EPOCHS:-1}
    EPOCHS=()
    [ -n "${TRAIN_EPOCHS:-}" ] && EPOCHS=(--epochs "$TRAIN_EPOCHS")
    : > "$WORK/accuracy.txt"
    for cfg in interp cuda cuda-graph; do
        extra=(--backend "${cfg%-graph}")
        [ $cfg = cuda-graph ] && extra+=(--cuda-graph)
        t0=$(now)
        run "mlp-$cfg" 30 "$PY" -m dlc.cli run examples/mlp.dln "${extra[@]}" "${EPOCHS[@]}" --no-progress \
            --metrics-json "$WORK/acc-$cfg.json"
        acc=$("$PY" -c "import json; print(json.load(open('$WORK/acc-$cfg.json'))['val_accuracy'])" 2>/dev/null || echo FAILED)
        printf '%-11s held-out accuracy %s  (%ss)\n' "$cfg" "$acc" "$(( $(now) - t0 ))" | tee -a "$WORK/accuracy.txt"
    done
    verdict=$("$PY" - "$WORK" <<'EOF'
import json, sys
w = sys.argv[1]
acc = {}
for c in ("interp", "cuda", "cuda-graph"):
    try:
        acc[c] = json.load(open(f"{w}/acc-{c}.json"))["val_accuracy"]
    except Exception:
        pass
if "interp" not in acc or len(acc) < 2:
    print("FAILED missing runs: " + ", ".join(c for c in ("interp", "cuda", "cuda-graph") if c not in acc))
else:
    worst = max(abs(v - acc["interp"]) for v in acc.values())
    print(("ok" if worst <= 0.02 else "FAILED") + f" largest difference from interp {worst:.4f} (tolerance 0.02)")
EOF
)
    status train "accuracy cuda vs interp" "${verdict%% *}" "${verdict#* }"
    HEADLINE="${TRAIN_EPOCHS:-20} epoch(s): ${verdict#* }"
    echo "${verdict#* }" >> "$WORK/accuracy.txt"
    # data parallel through NCCL (benchmarks/gpu_dp.py, issue 22): NCCL needs one GPU per rank, so a
    # one-GPU machine runs K = 1 only (the whole NCCL path, nothing to sum but its own gradients)
    if ! "$PY" -c "import mpi4py, cupy; cupy.cuda.nccl.get_unique_id" > /dev/null 2>&1; then
        status train "mlp-nccl" skipped "needs mpi4py with an MPI (bash benchmarks/gpu_prepare.sh mpi4py mpich) and CuPy's NCCL"
    else
        GPUS=$("$PY" -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())" 2>/dev/null || echo 1)
        K=$(( GPUS >= 2 ? 2 : 1 ))
        MPIEXEC=$("$PY" -c "from dlc.runtime.collectives import mpiexec; print(mpiexec())" 2>/dev/null || echo mpiexec)
        run "mlp-nccl-k$K" 60 "$MPIEXEC" -n "$K" "$PY" benchmarks/gpu_dp.py --epochs 1 \
            && echo "nccl: $(grep -E '^(ok|FAILED) ' "$STEP_LOG" | tail -1)" | tee -a "$WORK/accuracy.txt"
    fi
fi

# -- 2. memory safety: compute-sanitizer on one step of every example -----------------------------
if has sanitize; then
    begin sanitize
    if [ "$QUICK" = 1 ]; then SAN_EXAMPLES=${SAN_EXAMPLES:-xor}; fi
    if [ $DRY = 1 ]; then
        # the program the sanitizer would watch, without it: so that gpu_step.py cannot rot either
        # shellcheck disable=SC2086
        limited gpu_step 40 "$PY" benchmarks/gpu_step.py --batch 7 --graph $SAN_EXAMPLES
        steps=$(grep -c '^@@ .* ok' "$STEP_LOG")
        if [ $RC = 0 ]; then status sanitize "gpu_step.py" ok "dry run, no sanitizer: one graphed step of $steps example(s) agrees with interp"
        elif [ $RC = 125 ]; then status sanitize "gpu_step.py" skipped "no time left in the budget"
        else status sanitize "gpu_step.py" FAILED "exit $RC: $(grep '^@@ .*FAILED' "$STEP_LOG" | head -n 2 | tr '\n' ' ' | cut -c1-200)"
        fi
        status sanitize compute-sanitizer skipped "dry run: no GPU for it to watch"
    elif [ -z "$SANITIZER" ]; then
        status sanitize compute-sanitizer skipped "compute-sanitizer not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/*)"
    else
        # smallest first, so that a cut-off leaves the most examples checked; racecheck (shared
        # memory hazards, the slowest tool) on a smaller batch: the block shapes are the same
        SAN_EXAMPLES=${SAN_EXAMPLES:-$(for f in examples/*.dln; do e=$(basename "$f" .dln)
            case " lenet bottleneck inception " in *" $e "*) ;; *) echo "$e";; esac; done
            for e in lenet bottleneck inception; do [ -e "examples/$e.dln" ] && echo "$e"; done)}
        declare -A SAN_T=([memcheck]=35 [racecheck]=40 [synccheck]=25)
        for tool in ${SAN_TOOLS:-memcheck racecheck synccheck}; do
            batch=7
            [ "$tool" = racecheck ] && batch=${RACE_BATCH:-3}
            # shellcheck disable=SC2086
            limited "$tool" "${SAN_T[$tool]:-40}" "$SANITIZER" --tool "$tool" --print-limit 50 --error-exitcode 99 \
                "$PY" benchmarks/gpu_step.py --batch "$batch" $SAN_EXAMPLES
            f=$STEP_LOG
            summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard" "$f" | tail -n 2 | tr '\n' ' ')
            per=$(awk '/^@@ [^ ]+ start/ {ex=$2} /^========= +(Invalid|Program hit|Error|Race|ERROR|Barrier|Divergent|Warning)/ && !/SUMMARY/ && ex != "" {n[ex]++}
                       END {for (e in n) printf "%s:%d ", e, n[e]}' "$f")
            done_ok=$(awk '/^@@ [^ ]+ ok/ {printf "%s ", $2}' "$f")
            steps=$(grep -c '^@@ .* ok' "$f")
            total=$(echo $SAN_EXAMPLES | wc -w)
            if [ $RC = 125 ]; then
                status sanitize "$tool" skipped "no time left in the budget"
            elif grep -q "Device not supported" "$f"; then
                status sanitize "$tool" FAILED "compute-sanitizer cannot watch this GPU here (Device not supported: a sandboxed or virtualised GPU?)"
            elif { [ $RC = 124 ] || [ $RC = 137 ]; } && [ -z "$per" ]; then
                status sanitize "$tool" skipped "cut off after ${STEP_T}s (batch $batch): clean on $steps of $total examples (${done_ok:-none}); the rest not reached"
            else
                status sanitize "$tool" "$([ $RC = 0 ] && echo ok || echo FAILED)" \
                    "batch $batch: ${summary:-no summary line (exit $RC)} | steps ok $steps of $total | findings by example: ${per:-none}"
            fi
        done
    fi
fi

stop_warm

# -- 3. kernels against a copy and cuBLAS -----------------------------------------------------
if has kernels; then
    begin kernels
    [ "$QUICK" = 1 ] || [ $DRY = 1 ] && KERNEL_ARGS=${KERNEL_ARGS:-"--batch 64 --reps 3 --big 256 --copy-mib 16"}
    # shellcheck disable=SC2086
    run mlp 25 "$PY" benchmarks/bench_gpu.py kernels --example mlp ${KERNEL_ARGS:---batch 1024 32768} --json "$WORK/kernels.json"
    grep -v '^{' "$STEP_LOG" | tail -n 25
fi

# -- 3. speed: one process per configuration ------------------------------------------------------
# Each (example, batch) pair is completed before the next, so a cut-off leaves whole rows.
if has speed; then
    begin speed
    : > "$WORK/speed.jsonl"
    speed_one() {  # IMPL EXAMPLE BATCH [PRECISION]
        local impl=$1 ex=$2 b=$3 p=${4:-fp32} tag=""
        [ "$p" = fp32 ] || tag="-$p"
        # shellcheck disable=SC2086
        run "$impl-$ex-$b$tag" 60 "$PY" benchmarks/bench_gpu.py step --impl "$impl" --example "$ex" --batch "$b" \
            --precision "$p" --device "$TORCH_DEVICE" --json "$WORK/speed.jsonl" $SPEED_ARGS
        grep -q "^{" "$STEP_LOG" 2>/dev/null || \
            echo "{\"kind\": \"step\", \"impl\": \"$impl\", \"example\": \"$ex\", \"batch\": $b, \"precision\": \"$p\", \"error\": \"$([ $RC = 125 ] && echo 'skipped: no time left' || echo "no record (exit $RC)")\"}" \
            >> "$WORK/speed.jsonl"
    }
    PLAIN=() COMPILED=()
    for impl in $SPEED_IMPLS; do
        case $impl in
            eager|compile*) if [ "${TORCH_OK:-0}" != 1 ]; then status speed "$impl" skipped "${TORCH_WHY:-PyTorch unusable}"; continue; fi;;
        esac
        case $impl in compile*) COMPILED+=("$impl");; *) PLAIN+=("$impl");; esac
    done
    for ex in $SPEED_EXAMPLES; do for b in $SPEED_BATCHES; do
        for impl in "${PLAIN[@]}"; do speed_one "$impl" "$ex" "$b"; done
        for p in $SPEED_PRECISIONS; do for impl in "${PLAIN[@]}"; do   # the precision table's columns
            case $impl in dlc-graph|eager) speed_one "$impl" "$ex" "$b" "$p";; esac
        done; done
    done; done
    if [ ${#COMPILED[@]} -gt 0 ]; then
        if [ -n "$(warm_todo)" ]; then  # compile what is not cached yet, nothing timed meanwhile
            l=$(left)
            echo "compiling $(warm_todo | wc -l) torch.compile configurations first (at most $(( l / 2 ))s)"
            warm_start "${WARM_JOBS_SPEED:-4}"
            warm_wait $(( l / 2 ))
        fi
        for ex in $SPEED_EXAMPLES; do for b in $SPEED_BATCHES; do for impl in "${COMPILED[@]}"; do
            speed_one "$impl" "$ex" "$b"
        done; done; done
    fi
fi

# -- 1. the rest of the suite, with what time is left ------------------------------------------
if has suite; then
    if [ "$QUICK" = 1 ]; then
        skip_section suite "quick mode (the suite itself runs this dry run, in tests/test_gpu_check.py)"
    else
        begin suite
        CUT_OFF_OK=1 pytest_run rest-of-suite 600 --maxfail=5 --ignore=tests/test_cuda.py \
            --ignore=tests/test_gpu_check.py tests
    fi
fi

finish 0
