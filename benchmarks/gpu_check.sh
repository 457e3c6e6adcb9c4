#!/usr/bin/env bash
# The GPU check: what tests on fake CUDA tensors (tests/test_device.py) cannot see, in at
# most about 8 minutes on one GPU.
#
#   1. every example with --smoke --device cuda, under torch.cuda.set_sync_debug_mode("warn")
#      (set by benchmarks/gpu_check.py before the example runs; the synchronising calls are
#      counted by line);
#   2. a run killed (SIGKILL) after its first epoch's checkpoint and resumed on the device,
#      compared with an uninterrupted run;
#   3. that checkpoint, written on the GPU, loaded with CUDA hidden (CUDA_VISIBLE_DEVICES="");
#   4. pytest with CUDA visible (the tests whose defaults pick "auto": a GPU now);
#   5. one epoch per family (VAE at batch 100 and 1000, CVAE, Glow depth 4, DCGAN) on the GPU
#      and on this machine's CPU: epochs.json and epochs.md;
#   6. the main job's default run, python examples/cvae.py --device cuda, timed.
#
# Usage:
#   benchmarks/gpu_check.sh                       # on a GPU
#   benchmarks/gpu_check.sh --device cpu --quick  # the same stages end to end on a CPU
# Options: --device cuda|cpu, --quick (smoke sizes: slices for the timings, the main job with
# --smoke, only tests/test_device.py), --out DIR (default results/gpu_check), --jobs N
# (examples run in parallel, default 4), --budget SECONDS (default 480: the main job gets what
# the other stages leave, at least 60 s), --skip-main. GPU_CHECK_TESTS overrides stage 4's
# test files.
# Writes DIR/summary.json and DIR/summary.md; exits 1 when a stage failed.

set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
QUICK=0
OUT=results/gpu_check
JOBS=4
BUDGET=480
MAIN=1
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --skip-main) MAIN=0; shift ;;
    -h|--help) sed -n '2,24p' "$0" | cut -c3-; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
HELPER=benchmarks/gpu_check.py
START=$(date +%s)
mkdir -p "$OUT/examples" "$OUT/logs"
: > "$OUT/stages.jsonl"

elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[gpu_check $(elapsed)s] $*" >&2; }
# stage NAME STATUS SECONDS [JSON-FILE]: one line of stages.jsonl
stage() {
  "$PY" - "$1" "$2" "$3" "${4:-}" >> "$OUT/stages.jsonl" <<'EOF'
import json, sys
name, status, seconds, detail = sys.argv[1:5]
rec = {"stage": name, "status": int(status), "seconds": int(seconds)}
if detail:
    try:
        lines = [l for l in open(detail).read().splitlines() if l.startswith("{")]
        rec["detail"] = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        rec["detail"] = None
print(json.dumps(rec))
EOF
}

if [ "$DEVICE" != "cpu" ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: --device $DEVICE asked, but torch sees no CUDA device; use --device cpu" >&2
    exit 2
  fi
  nvidia-smi -L >&2 2>/dev/null || true
fi
"$PY" -c "import torch, platform; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine())" >&2

# ------------------------------------------------------------------ 1. examples
log "1. examples with --smoke --device $DEVICE (sync debug mode: warn), $JOBS at a time"
t=$(date +%s)
EX_TIMEOUT=$([ "$QUICK" = 1 ] && echo 600 || echo 150)
: > "$OUT/examples/status.txt"
ls examples/*.py | grep -v '/_' | xargs -P "$JOBS" -I{} sh -c '
  name=$(basename {} .py)
  timeout '"$EX_TIMEOUT"' '"$PY"' '"$HELPER"' example {} --smoke --device '"$DEVICE"' \
    --out '"$OUT"'/examples/$name --no-progress > '"$OUT"'/examples/$name.log 2>&1
  echo "$name $?" >> '"$OUT"'/examples/status.txt'
bad=$(awk '$2 != 0' "$OUT/examples/status.txt" | wc -l)
"$PY" - "$OUT/examples" > "$OUT/examples/summary.json" <<'EOF'
import json, pathlib, sys
out = {}
for log in sorted(pathlib.Path(sys.argv[1]).glob("*.log")):
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.startswith('{"example"')]
    out[log.stem] = json.loads(lines[-1]) if lines else {"returncode": None,
                                                         "tail": log.read_text(errors="replace")[-1500:]}
print(json.dumps(out))
EOF
stage examples "$([ "$bad" = 0 ] && echo 0 || echo 1)" $(( $(date +%s) - t ))
log "   $(wc -l < "$OUT/examples/status.txt") examples, $bad failed (logs in $OUT/examples)"

# ------------------------------------------------------------------ 2. kill and resume
log "2. one epoch, killed, resumed on $DEVICE"
t=$(date +%s)
timeout 120 "$PY" "$HELPER" kill-resume --device "$DEVICE" --dir "$OUT/resume" \
  --limit $([ "$QUICK" = 1 ] && echo 2048 || echo 20000) > "$OUT/logs/resume.log" 2>&1
stage kill-resume $? $(( $(date +%s) - t )) "$OUT/logs/resume.log"

# ------------------------------------------------------------------ 3. load with CUDA hidden
log "3. the $DEVICE checkpoint loaded with CUDA hidden"
t=$(date +%s)
CUDA_VISIBLE_DEVICES="" timeout 60 "$PY" "$HELPER" load --checkpoint "$OUT/resume/whole.pt" \
  > "$OUT/logs/load.log" 2>&1
stage load-without-cuda $? $(( $(date +%s) - t )) "$OUT/logs/load.log"

# ------------------------------------------------------------------ 4. pytest, CUDA visible
if [ "$QUICK" = 1 ]; then
  TESTS="tests/test_device.py"
else
  TESTS="tests/test_device.py tests/test_readme.py tests/test_mevae.py tests/test_train.py"
fi
TESTS=${GPU_CHECK_TESTS:-$TESTS}
log "4. pytest $TESTS (CUDA visible: device='auto' picks it)"
t=$(date +%s)
timeout 180 "$PY" -m pytest -q -x -p no:cacheprovider $TESTS > "$OUT/logs/pytest.log" 2>&1
status=$?
tail -n 3 "$OUT/logs/pytest.log" >&2
stage pytest $status $(( $(date +%s) - t ))

# ------------------------------------------------------------------ 5. one epoch per family
log "5. one epoch per family on $DEVICE$([ "$DEVICE" != cpu ] && echo " and on this machine's CPU")"
t=$(date +%s)
timeout 240 "$PY" "$HELPER" time-epochs --device "$DEVICE" --out "$OUT" \
  $([ "$QUICK" = 1 ] && echo "--quick --cpu-limit 512") > "$OUT/logs/epochs.log" 2>&1
stage time-epochs $? $(( $(date +%s) - t )) "$OUT/logs/epochs.log"
[ -f "$OUT/epochs.md" ] && cat "$OUT/epochs.md" >&2

# ------------------------------------------------------------------ 6. the main job
if [ "$MAIN" = 1 ]; then
  left=$(( BUDGET - $(elapsed) ))
  [ "$left" -lt 60 ] && left=60
  MAIN_ARGS="--device $DEVICE --out $OUT/cvae --no-progress"
  [ "$QUICK" = 1 ] && MAIN_ARGS="$MAIN_ARGS --smoke"
  log "6. python examples/cvae.py $MAIN_ARGS (at most ${left}s)"
  t=$(date +%s)
  timeout "$left" "$PY" examples/cvae.py $MAIN_ARGS > "$OUT/logs/cvae.log" 2>&1
  status=$?
  secs=$(( $(date +%s) - t ))
  [ "$status" = 124 ] && log "   the main job ran out of its ${left}s (status 124)"
  tail -n 12 "$OUT/logs/cvae.log" >&2
  stage main-job $status $secs
fi

# ------------------------------------------------------------------ summary
"$PY" - "$OUT" "$DEVICE" "$(elapsed)" <<'EOF'
import json, pathlib, sys
out, device, total = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
stages = [json.loads(l) for l in (out / "stages.jsonl").read_text().splitlines() if l.strip()]
examples = json.loads((out / "examples" / "summary.json").read_text())
summary = {"device": device, "seconds": total, "stages": stages, "examples": examples}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
lines = [f"# GPU check on {device}: {total} s", "", "| stage | status | seconds |", "|---|---|---|"]
lines += [f"| {s['stage']} | {'ok' if s['status'] == 0 else 'FAILED (' + str(s['status']) + ')'} "
          f"| {s['seconds']} |" for s in stages]
lines += ["", "| example | status | seconds | sync warnings |", "|---|---|---|---|"]
for name, e in examples.items():
    lines.append(f"| {name} | {e.get('returncode')} | {e.get('seconds', '')} | "
                 f"{e.get('sync_warnings', '') if e.get('sync_debug') else 'n/a (no CUDA)'} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if all(s["status"] == 0 for s in stages) else 1)
EOF
