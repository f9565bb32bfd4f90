#!/bin/bash
# UCE on ShapesWorld: the default config vs the paper preset (tokens=from_last + "" preserved), erasing C.
set -x
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
EK=.venv/bin/erasekit
C=${1:-star}
D=runs/uce_modes
mkdir -p $D
for p in default paper; do
  $EK erase uce --model shapes --concept $C --out $D/$C-$p -o preset=$p --json > $D/$C-$p.erase.json 2> $D/$C-$p.erase.err
  $EK evaluate --model shapes --artifact $D/$C-$p --suite shapesworld --erased $C --out $D/$C-$p-eval --threads 1 > $D/$C-$p.eval.out 2> $D/$C-$p.eval.err
done
echo done
