#!/usr/bin/env bash
# Reproduce the default checkpoint (checkpoints/default/) on CPU:
#   synthetic world -> planning anchors -> training stage 1 -> text pretraining of the LLM (the tiny preset's LLM
#   starts from random weights) -> stages 2, 3 (paper sec. 4.2) -> half-precision export.
#
#   bash scripts/train_default.sh [WORK_DIR]          # default WORK_DIR: runs/default
#
# Every step is a `sparseoccvla` subcommand; a step whose output exists is skipped and an interrupted stage
# continues with --resume, so the script can be re-run after a stop.  Wall time of each step goes to
# WORK_DIR/timing.tsv.  Model and training settings: config/model_default.yaml, config/train_default.yaml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
W=${1:-runs/default}
CLI=${SPARSEOCCVLA:-.venv/bin/sparseoccvla}
mkdir -p "$W"
step() {  # step NAME DONE_FILE COMMAND...
  local name=$1 done_file=$2; shift 2
  if [[ -e $done_file ]]; then echo "[train_default] $name: done ($done_file)"; return; fi
  echo "[train_default] $name: $*"
  local t0=$SECONDS
  "$@"
  printf '%s\t%d\n' "$name" $((SECONDS - t0)) >>"$W/timing.tsv"
}
resume() {  # --resume when the stage folder already holds per-epoch checkpoints
  if compgen -G "$1/checkpoints/epoch_*" >/dev/null; then echo --resume; fi
}
step synth "$W/data/splits.json" "$CLI" synth --out "$W/data" --scenes 28 --seed 0 --frames 40 \
  --width 480 --height 270 --no-lidar --overwrite
step anchors "$W/anchors.npz" "$CLI" anchors --data "$W/data" --out "$W/anchors.npz"
common=(--train-config config/train_default.yaml --data "$W/data" --anchors "$W/anchors.npz" --no-progress)
step stage1 "$W/s1/model.safetensors" "$CLI" train --stage 1 --config config/model_default.yaml "${common[@]}" \
  --out "$W/s1" $(resume "$W/s1")
step text "$W/s1_text/model.safetensors" "$CLI" pretrain-llm --init "$W/s1" --data "$W/data" \
  --train-config config/train_default.yaml --epochs 4 --out "$W/s1_text"
step stage2 "$W/s2/model.safetensors" "$CLI" train --stage 2 --init "$W/s1_text" "${common[@]}" --out "$W/s2" $(resume "$W/s2")
step stage3 "$W/s3/model.safetensors" "$CLI" train --stage 3 --init "$W/s2" "${common[@]}" --out "$W/s3" $(resume "$W/s3")
echo "[train_default] done; export with: $CLI export --ckpt $W/s3 --out checkpoints/default --dtype float16 --overwrite"
