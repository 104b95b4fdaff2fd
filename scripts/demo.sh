#!/usr/bin/env bash
# The whole job on one machine, end to end:
#   1. a synthetic woven-fabric category and a 3072×2048 camera frame with defects
#      (or, with DATA=path/to/category, your own MVTec-layout images),
#   2. a short training run (configs/demo.yaml),
#   3. export to ONNX,
#   4. inspection of the frame (or of DATA's test images): heatmap PNGs + JSON report,
#   5. evaluation on the category's test images (metrics as JSON).
# Run it through `make demo` (which runs `make setup` first), from any folder.
#
# Environment:
#   DATA         MVTec-layout category to use instead of the synthetic fabric
#   DEMO_OUT     output folder (default demo-out, git-ignored)
#   DEMO_CONFIG  training config (default configs/demo.yaml; its `roots` are replaced)
#   MODEL        where the exported model goes (default onnx/demo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${DATA:-}"
if [ -n "$DATA" ]; then
    [ -d "$DATA" ] || { echo "demo: error: DATA=$DATA is not a folder" >&2; exit 1; }
    DATA="$(cd "$DATA" && pwd)"
fi
cd "$ROOT"
OUT="${DEMO_OUT:-demo-out}"
CONFIG="${DEMO_CONFIG:-configs/demo.yaml}"
MODEL="${MODEL:-onnx/demo}"
BIN="${CARGO_TARGET_DIR:-target}/release"
FI="$BIN/fabric-inspect"
FT="$BIN/fabric-train"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$ROOT/target/xdg-cache}"

START=$(date +%s)
step() { printf '\n==> [%s] %s  (%d s so far)\n' "$1" "$2" "$(($(date +%s) - START))"; }
die() {
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}

for b in "$FI" "$FT"; do
    [ -x "$b" ] || die "$b is missing: run 'make setup' (or use 'make demo', which does)"
done
[ -f "$CONFIG" ] || die "training config $CONFIG not found"
mkdir -p "$OUT"

if [ -z "$DATA" ]; then
    step 1/5 "synthetic twill fabric: 20 train, 4 good + 12 defective test images (512×512), one 3072×2048 frame"
    CATEGORY="$OUT/data/fabric"
    "$FI" synth --out "$CATEGORY" --weave twill --seed 7 \
        --train 20 --test-good 4 --test-defect 3 --size 512x512 --frame
    INPUTS=("$CATEGORY/frame.png")
else
    step 1/5 "your data: $DATA"
    [ -d "$DATA/train/good" ] ||
        die "$DATA has no train/good folder; DATA must be an MVTec-layout category (train/good, test/..., ground_truth/...)"
    CATEGORY="$DATA"
    if [ -d "$DATA/test" ]; then
        INPUTS=("$DATA/test")
    else
        INPUTS=("$DATA/train/good")
    fi
fi

step 2/5 "training (config $CONFIG, data $CATEGORY)"
RUN="$OUT/run"
rm -rf "$RUN"
RUN_CONFIG="$OUT/train-config.yaml"
# The demo config's single root is replaced by the category in use.
"${PYTHON:-python3}" - "$CONFIG" "$CATEGORY" "$RUN_CONFIG" <<'PY'
import json, sys
src, root, dst = sys.argv[1:4]
out, in_roots = [], False
for line in open(src, encoding="utf-8"):
    if in_roots:
        if line.strip().startswith("- "):
            continue
        in_roots = False
    if line.startswith("roots:"):
        out.append("roots:\n")
        out.append(f"  - {json.dumps(root)}\n")
        in_roots = True
        continue
    out.append(line)
open(dst, "w", encoding="utf-8").write("".join(out))
PY
"$FT" train --config "$RUN_CONFIG" --out "$RUN"

step 3/5 "export to ONNX: $MODEL"
rm -rf "$MODEL"
"$FT" export --checkpoint "$RUN" --out "$MODEL"

step 4/5 "inspection of ${INPUTS[*]}"
INSPECT="$OUT/inspect"
# Start from an empty folder, so that the summary below lists this run's heatmaps only.
rm -rf "$INSPECT"
mkdir -p "$INSPECT"
REPORT="$INSPECT/report.jsonl"
status=0
"$FI" inspect --model "$MODEL" "${INPUTS[@]}" --out "$INSPECT" --json "$REPORT" || status=$?
[ "$status" -le 1 ] || die "inspection failed (exit status $status)"

EVAL_JSON=""
if [ -d "$CATEGORY/test" ]; then
    step 5/5 "evaluation on $CATEGORY/test"
    EVAL_JSON="$OUT/eval.json"
    "$FI" eval --model "$MODEL" --data "$CATEGORY" --json "$EVAL_JSON"
else
    step 5/5 "evaluation skipped: $CATEGORY has no test folder"
fi

printf '\n==> done in %d s\n' "$(($(date +%s) - START))"
echo "model:           $MODEL (teacher.onnx, student.onnx, model.yaml)"
echo "training run:    $RUN"
echo "inspect report:  $REPORT"
echo "heatmaps:"
find "$INSPECT" -name '*.png' | sort | sed 's/^/  /'
[ -z "$EVAL_JSON" ] || echo "evaluation:      $EVAL_JSON"
[ -n "$DATA" ] || echo "frame and mask:  $CATEGORY/frame.png, $CATEGORY/frame_mask.png"
if [ "$status" -eq 1 ]; then
    echo "note: some inputs could not be inspected (see the messages above)"
fi
