#!/usr/bin/env bash
# The whole GPU check of issue 5 in one command (see benchmarks/GPU.md):
#
#   bash benchmarks/gpu_check.sh [SECTIONS]
#
# SECTIONS: comma-separated, default all =
#   env,tests,diff,train,sanitize,kernels,speed,suite
# Each section has a time budget (seconds; override with the variables below) and the whole run
# stays under BUDGET (default 540 s). A step that fails prints FAILED with the reason and the
# script goes on; a step that does not fit prints SKIPPED. It always exits 0.
# Results: under $OUT (default /tmp/dlc-gpu-check): gpu-DATE.txt (the summary, to be committed
# as benchmarks/results/gpu-DATE.txt), full.log, env.json, speed.jsonl, kernels.json,
# logs.tar.gz (every step's own log). Without a GPU it says so, runs the CPU-side parts
# (environment, the PyTorch twins against the interpreter, the cuda backend's bookkeeping on the
# emulator) and exits 0; GPU_CHECK_FORCE=1 runs every section anyway.
#
# Budgets: T_ENV T_TESTS T_DIFF T_TRAIN T_SANITIZE T_KERNELS T_SPEED (seconds), BUDGET (total).
# SPEED_IMPLS (default "dlc-graph eager dlc compile-ro compile"), SPEED_EXAMPLES, SPEED_BATCHES,
# TAG (the result file is gpu-DATE-TAG.txt), SAN_TOOLS (default "memcheck racecheck synccheck"), WARM_JOBS (parallel torch.compile cache
# warm-up processes during the correctness sections, default 2; 0 = none).
set -u
cd "$(dirname "$0")/.." || exit 0
REPO=$(pwd)
START=$(date +%s)
BUDGET=${BUDGET:-540}
DATE=$(date -u +%Y-%m-%d)
SECTIONS=${1:-all}
[ "$SECTIONS" = all ] && SECTIONS=env,tests,diff,train,sanitize,kernels,speed,suite
OUT=${OUT:-/tmp/dlc-gpu-check}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/dlc-gpu-work.XXXXXX)
mkdir -p "$WORK/logs"
LOG=$OUT/full.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
export DLC_CACHE_DIR=${DLC_CACHE_DIR:-/tmp/dlc-cache}                 # emu libraries, shared by all steps
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/dlc-inductor-cache}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/dlc-triton-cache}
export CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0                           # fp32 everywhere
: > "$WORK/status.tsv"

has() { case ",$SECTIONS," in *",$1,"*) return 0;; *) return 1;; esac; }
now() { date +%s; }
elapsed() { echo $(( $(now) - START )); }
status() {  # SECTION ITEM STATUS DETAIL
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$WORK/status.tsv"
    printf '[%4ss] %-10s %-34s %s %s\n' "$(elapsed)" "$1" "$2" "$3" "${4:-}"
}
SEC_END=0
section() {  # NAME BUDGET
    SEC=$1
    SEC_END=$(( $(now) + $2 ))
    echo
    echo "=== $1 (budget ${2}s, $(( BUDGET - $(elapsed) ))s left overall) ==="
}
left() {  # seconds left in this section and overall, whichever is less
    local a=$(( SEC_END - $(now) )) b=$(( START + BUDGET - $(now) ))
    echo $(( a < b ? a : b ))
}
# run NAME TIMEOUT CMD...: runs CMD with a time limit, its output in logs/SEC-NAME.log
RC=0
run() {
    local name=$1 t=$2; shift 2
    local l; l=$(left)
    local f="$WORK/logs/$SEC-$name.log"
    if (( l < 8 )); then status "$SEC" "$name" SKIPPED "no time left in the budget"; RC=125; return 125; fi
    (( t > l - 3 )) && t=$(( l - 3 ))
    local t0; t0=$(now)
    timeout -k 5 "$t" "$@" > "$f" 2>&1
    RC=$?
    local dt=$(( $(now) - t0 ))
    if [ $RC = 0 ]; then
        status "$SEC" "$name" ok "${dt}s"
    elif [ $RC = 124 ] || [ $RC = 137 ]; then
        status "$SEC" "$name" FAILED "timed out after ${t}s"
    else
        status "$SEC" "$name" FAILED "exit $RC: $(grep -v '^\s*$' "$f" | tail -n 2 | tr '\n' ' ' | cut -c1-220)"
    fi
    return $RC
}

echo "dlc GPU check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), sections $SECTIONS, budget ${BUDGET}s"
echo "repo $REPO, results in $OUT, work files in $WORK"

# -- environment ---------------------------------------------------------------------------------
section env "${T_ENV:-40}"
if ! $PY -c "import lark" 2>/dev/null; then
    if ls .whl/*.whl > /dev/null 2>&1; then
        echo "lark missing: installing the carried wheels from .whl/"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "lark missing and no .whl/ folder carried (see benchmarks/GPU.md)"
    fi
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
if [ "${DLC_FAKE_CUPY:-0}" = 1 ] && $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('cupy') is None)" 2>/dev/null; then
    echo "DLC_FAKE_CUPY=1 ignored: a real CuPy is installed here, and the stand-in never replaces it"
    DLC_FAKE_CUPY=0
fi
if [ "${DLC_FAKE_CUPY:-0}" = 1 ]; then  # a dry run of every section without a GPU (numbers meaningless)
    echo "DRY RUN: CuPy is the emulator-backed stand-in of tests/fake_cupy.py, PyTorch runs on the CPU"
    export PYTHONPATH=$REPO/tests/fake_cupy_path:$PYTHONPATH
    TORCH_DEVICE=cpu
    GPU_CHECK_FORCE=1
    KERNEL_ARGS=${KERNEL_ARGS:-"--batch 64 --reps 3 --big 256"}
fi
if $PY -c "import lark, jinja2, networkx, numpy" 2>/dev/null; then
    status env "dlc dependencies" ok "$($PY -c 'import lark; print("lark", lark.__version__)')"
else
    status env "dlc dependencies" FAILED "$($PY -c 'import lark, jinja2, networkx, numpy' 2>&1 | tail -n 1)"
fi
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu \
        --format=csv,noheader > "$WORK/nvidia-smi.txt" 2>&1 || true
    nvidia-smi > "$WORK/logs/env-nvidia-smi.log" 2>&1 || true
    echo "nvidia-smi: $(head -n 1 "$WORK/nvidia-smi.txt")"
else
    echo "no nvidia-smi" > "$WORK/nvidia-smi.txt"
    echo "nvidia-smi: not found"
fi
run versions 60 $PY benchmarks/bench_gpu.py env --json "$WORK/env.json"
cat "$WORK/logs/env-versions.log"
GPU_WHY=$($PY -c "from dlc.runtime.cuda import cuda_available as c; ok, why = c(); print(('yes ' if ok else 'no ') + why)" 2>&1 | tail -n 1)
case "$GPU_WHY" in yes*) HAVE_GPU=1;; *) HAVE_GPU=0;; esac
TORCH_GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
[ "$TORCH_DEVICE" = cpu ] && TORCH_GPU=1  # dry run: PyTorch's side runs on the CPU
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
echo "cuda backend: $GPU_WHY"
echo "torch sees a GPU: $TORCH_GPU; compute-sanitizer: ${SANITIZER:-not found}"
if [ $HAVE_GPU = 0 ]; then
    status env "GPU" "NONE" "${GPU_WHY#no }"
    if [ "${GPU_CHECK_FORCE:-0}" != 1 ]; then
        echo
        echo "NO GPU: running only the parts that need none (the PyTorch twins against the interpreter,"
        echo "the cuda backend's bookkeeping on the emulator); GPU sections are reported as SKIPPED."
        SECTIONS=env,cpu
        for s in tests diff train sanitize kernels speed suite; do status "$s" "(section)" SKIPPED "no GPU"; done
    fi
else
    status env "GPU" ok "${GPU_WHY#yes }"
fi

# -- torch.compile cache warm-up ----------------------------------------------------------------
# torch.compile spends 10-60 s per configuration compiling. These untimed processes fill the
# Inductor and Triton caches (shared through TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR), in the
# background while the correctness sections run (they time nothing, so sharing the GPU is harmless),
# and again before the compiled configurations are timed, with nothing timed beside them.
SPEED_EXAMPLES=${SPEED_EXAMPLES:-"mlp logreg xor deep_mlp lenet inception"}
SPEED_BATCHES=${SPEED_BATCHES:-"128 1024"}
SPEED_IMPLS=${SPEED_IMPLS:-"dlc-graph eager dlc compile-ro compile"}
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
    [ "$TORCH_GPU" = 1 ] && [ "$n" -gt 0 ] || return 0
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
                TORCHINDUCTOR_COMPILE_THREADS=4 timeout -k 5 180 $PY benchmarks/bench_gpu.py step --warm-only \
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
has speed && warm_start "${WARM_JOBS:-2}"

# -- CPU-only parts (no GPU here) ----------------------------------------------------------------
if has cpu; then
    section cpu "${T_CPU:-240}"
    run torch-twins 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_torch_equivalents.py
    echo "  $(tail -n 1 "$WORK/logs/cpu-torch-twins.log")"
    run cuda-bookkeeping 120 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py
    echo "  $(tail -n 1 "$WORK/logs/cpu-cuda-bookkeeping.log")"
    $PY benchmarks/gpu_step.py mlp > "$WORK/logs/cpu-gpu_step.log" 2>&1
    if grep -q "cuda backend unavailable" "$WORK/logs/cpu-gpu_step.log"; then
        status cpu "gpu_step (no GPU)" ok "reports: $(head -n 1 "$WORK/logs/cpu-gpu_step.log" | cut -c1-150)"
    else
        status cpu "gpu_step (no GPU)" FAILED "$(tail -n 2 "$WORK/logs/cpu-gpu_step.log" | tr '\n' ' ' | cut -c1-200)"
    fi
fi

# -- 1. correctness: the test suites on the GPU ---------------------------------------------------
if has tests; then
    section tests "${T_TESTS:-150}"
    run test_cuda 90 $PY -m pytest -q -p no:cacheprovider -rs --maxfail=10 tests/test_cuda.py
    echo "  $(tail -n 1 "$WORK/logs/tests-test_cuda.log")"
    if grep -q "SKIPPED.*cuda backend unavailable" "$WORK/logs/tests-test_cuda.log"; then
        status tests "test_cuda GPU tests" FAILED "skipped: the tests did not see the GPU"
    fi
    run test_emu 140 $PY -m pytest -q -p no:cacheprovider -rs -x tests/test_emu.py
    echo "  $(tail -n 1 "$WORK/logs/tests-test_emu.log")"
fi

# -- 1. correctness: dlc diff on every example -----------------------------------------------------
if has diff; then
    section diff "${T_DIFF:-70}"
    for f in examples/*.dln; do
        ex=$(basename "$f" .dln)
        if run "$ex" 25 $PY -m dlc.cli diff "$f" --backends interp,emu,cuda; then :; elif [ $RC = 124 ] || [ $RC = 137 ]; then
            run "$ex-noemu" 15 $PY -m dlc.cli diff "$f" --backends interp,cuda
        fi
        lf=$(ls -t "$WORK"/logs/diff-"$ex"*.log | head -n 1)
        echo "  $ex: $(grep -E '^(emu|cuda): skipped|^result' "$lf" | tr '\n' ' ')"
    done
fi

# -- 1. correctness: a short training run, GPU against CPU --------------------------------------
if has train; then
    section train "${T_TRAIN:-50}"
    : > "$WORK/accuracy.txt"
    for cfg in interp cuda cuda-graph; do
        extra=(--backend "${cfg%-graph}")
        [ $cfg = cuda-graph ] && extra+=(--cuda-graph)
        t0=$(now)
        run "mlp-$cfg" 30 $PY -m dlc.cli run examples/mlp.dln "${extra[@]}" --no-progress \
            --metrics-json "$WORK/acc-$cfg.json"
        acc=$($PY -c "import json; print(json.load(open('$WORK/acc-$cfg.json'))['val_accuracy'])" 2>/dev/null || echo FAILED)
        printf '%-11s held-out accuracy %s  (%ss)\n' "$cfg" "$acc" "$(( $(now) - t0 ))" | tee -a "$WORK/accuracy.txt"
    done
    verdict=$($PY - "$WORK" <<'EOF'
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
    echo "${verdict#* }" >> "$WORK/accuracy.txt"
fi

# -- 2. memory safety: compute-sanitizer on one step of every example -----------------------------
if has sanitize; then
    section sanitize "${T_SANITIZE:-110}"
    if [ -z "$SANITIZER" ]; then
        status sanitize compute-sanitizer FAILED "not found on this machine"
    else
        for tool in ${SAN_TOOLS:-memcheck racecheck synccheck}; do
            run "$tool" 45 "$SANITIZER" --tool "$tool" --print-limit 50 --error-exitcode 99 \
                $PY benchmarks/gpu_step.py --batch 7
            f="$WORK/logs/sanitize-$tool.log"
            summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard" "$f" | tail -n 2 | tr '\n' ' ')
            per=$(awk '/^@@ [^ ]+ start/ {ex=$2} /^========= +(Invalid|Program hit|Error|Race|ERROR|Barrier|Divergent|Warning)/ && !/SUMMARY/ && ex != "" {n[ex]++}
                       END {for (e in n) printf "%s:%d ", e, n[e]}' "$f")
            steps=$(grep -c '^@@ .* ok' "$f")
            if grep -q "Device not supported" "$f"; then
                status sanitize "$tool summary" FAILED "compute-sanitizer cannot watch this GPU here (Device not supported: a sandboxed or virtualised GPU?)"
            else
                status sanitize "$tool summary" "$([ $RC = 0 ] && echo ok || echo FAILED)" \
                    "${summary:-no summary line} | steps ok $steps | findings by example: ${per:-none}"
            fi
        done
    fi
fi

stop_warm

# -- 3. kernels against a copy and cuBLAS -----------------------------------------------------
if has kernels; then
    section kernels "${T_KERNELS:-45}"
    # shellcheck disable=SC2086
    run mlp 60 $PY benchmarks/bench_gpu.py kernels --example mlp ${KERNEL_ARGS:---batch 1024 32768} --json "$WORK/kernels.json"
    grep -v '^{' "$WORK/logs/kernels-mlp.log" | tail -n 25
fi

# -- 3. speed: one process per configuration ------------------------------------------------------
if has speed; then
    section speed "${T_SPEED:-200}"
    : > "$WORK/speed.jsonl"
    for impl in $SPEED_IMPLS; do
        case $impl in compile*)
            [ "$TORCH_GPU" = 1 ] || { status speed "$impl" SKIPPED "torch has no GPU"; continue; }
            if [ -n "$(warm_todo)" ]; then  # compile what is not cached yet, nothing timed meanwhile
                l=$(left)
                echo "compiling $(warm_todo | wc -l) torch.compile configurations first (at most $(( l / 2 ))s)"
                warm_start "${WARM_JOBS_SPEED:-4}"
                warm_wait $(( l / 2 ))
            fi;;
        esac
        for b in $SPEED_BATCHES; do
            for ex in $SPEED_EXAMPLES; do
                run "$impl-$ex-$b" 90 $PY benchmarks/bench_gpu.py step --impl "$impl" --example "$ex" --batch "$b" \
                    --device "$TORCH_DEVICE" --json "$WORK/speed.jsonl"
                grep -q "^{" "$WORK/logs/speed-$impl-$ex-$b.log" 2>/dev/null || \
                    echo "{\"kind\": \"step\", \"impl\": \"$impl\", \"example\": \"$ex\", \"batch\": $b, \"error\": \"$([ $RC = 125 ] && echo 'skipped: no time left' || echo "no record (exit $RC)")\"}" \
                    >> "$WORK/speed.jsonl"
            done
        done
    done
fi

# -- 1. the rest of the suite, if time allows -------------------------------------------------
if has suite; then
    section suite $(( BUDGET - $(elapsed) - 15 ))
    run rest-of-suite 600 $PY -m pytest -q -p no:cacheprovider -rs -x --ignore=tests/test_cuda.py \
        --ignore=tests/test_emu.py tests
    echo "  $(tail -n 1 "$WORK/logs/suite-rest-of-suite.log" 2>/dev/null)"
fi

# -- summary ------------------------------------------------------------------------------------
stop_warm
echo
echo "=== summary ($(elapsed)s) ==="
RESULT="$OUT/gpu-$DATE${TAG:+-$TAG}.txt"
{
    echo "command: bash benchmarks/gpu_check.sh $*   (sections ${SECTIONS})"
    $PY benchmarks/bench_gpu.py summary --work "$WORK" 2>&1 || echo "summary FAILED"
    echo "total time $(elapsed)s"
} > "$RESULT"
for f in env.json speed.jsonl kernels.json; do [ -e "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"; done
tar -czf "$OUT/logs.tar.gz" -C "$WORK" . 2>/dev/null || true
if [ $HAVE_GPU = 1 ] && [ "${DLC_FAKE_CUPY:-0}" != 1 ] && [ -d benchmarks/results ]; then cp "$RESULT" "benchmarks/results/"; fi
cat "$RESULT"
echo
echo "=== not ok (also above) ==="
grep -E "^  [a-z]+ +.* (FAILED|SKIPPED|NONE) " "$RESULT" | cut -c1-170 | head -n 40
grep -E "^target|^FAILED" "$RESULT" | cut -c1-170 | head -n 20
echo "results: $RESULT (commit as benchmarks/results/$(basename "$RESULT")), full log $LOG, logs $OUT/logs.tar.gz"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit 0
