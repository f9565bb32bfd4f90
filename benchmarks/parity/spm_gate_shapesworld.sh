#!/bin/bash
# SPM inference gate: one trained artifact, evaluated with erasekit's gate and with the public code's.
# The gate acts only at inference, so the "reference" artifact is the same file with the hook's mode
# (and the recorded config.gate) switched: training is identical by construction.
set -x
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
EK=.venv/bin/erasekit
C=${1:-star}
D=runs/spm_gate
mkdir -p $D
/usr/bin/time -v $EK erase spm --model shapes --concept $C --out $D/$C-facilitated --json > $D/$C-facilitated.erase.json 2> $D/$C-facilitated.erase.err
cp $D/$C-facilitated.safetensors $D/$C-reference.safetensors
.venv/bin/python - "$D/$C-facilitated.json" "$D/$C-reference.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for hook in m["hooks"]:
    if hook["kind"] == "spm_gate":
        hook["config"]["mode"] = "reference"
m["config"]["gate"] = "reference"
json.dump(m, open(sys.argv[2], "w"), indent=1)
PY
for g in facilitated reference; do
  /usr/bin/time -v $EK evaluate --model shapes --artifact $D/$C-$g --suite shapesworld --erased $C --out $D/$C-$g-eval --threads 1 > $D/$C-$g.eval.out 2> $D/$C-$g.eval.err
done
echo done
