#!/usr/bin/env bash
# Set up erasekit in .venv: CPU torch first, then erasekit with its test extras, then the CLIP vocabulary.
#
# Idempotent: a second run checks a stamp (hash of pyproject.toml and this script) and returns in a
# second. Works on a fresh Debian machine with Python >= 3.10 and PyPI; no GPU, nothing pre-installed.
#   PYTHON=python3.12 bash scripts/setup.sh    # choose the interpreter (default: python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
# torch first and pinned: this CPU build lies on the machine's local wheel store, while an unpinned
# torch (or one pulled in by diffusers/accelerate) would download GBs of CUDA libraries.
TORCH_SPEC="${ERASEKIT_TORCH:-torch==2.13.0}"
STAMP="$VENV/.erasekit-setup"

"$PYTHON" - <<'PY' || { echo "setup.sh: erasekit needs Python >= 3.10 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
  && "$VENV/bin/python" -c "
import importlib.util as u, pathlib, sys
missing = [m for m in ('torch', 'diffusers', 'transformers', 'pytest', 'erasekit', 'open_clip') if u.find_spec(m) is None]
sys.exit(bool(missing) or not (pathlib.Path(u.find_spec('open_clip').origin).parent / 'bpe_simple_vocab_16e6.txt.gz').is_file())
" 2>/dev/null; then
  echo "setup.sh: $VENV is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    # Debian's own python3 ships venv/ensurepip separately.
    if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
      ver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      DEBIAN_FRONTEND=noninteractive apt-get install -y "python${ver}-venv" \
        || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "python${ver}-venv"; }
      "$PYTHON" -m venv "$VENV"
    else
      echo "setup.sh: '$PYTHON -m venv' failed; install your distribution's python3-venv package" >&2
      exit 1
    fi
  fi
fi

pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "setup.sh: installing $TORCH_SPEC (CPU)"
"${pip[@]}" "$TORCH_SPEC"
echo "setup.sh: installing erasekit[test] (editable)"
"${pip[@]}" -e ".[test]"
# Only for its CLIP BPE vocabulary file; its dependencies (torchvision among them) are not wanted.
echo "setup.sh: installing open-clip-torch (CLIP vocabulary only, --no-deps)"
"${pip[@]}" --no-deps "open-clip-torch>=2.20,<4"

"$VENV/bin/python" - <<'PY'
import importlib.util, sys
import torch
from erasekit.backends.tokenizer import load_clip_tokenizer
if importlib.util.find_spec("torchvision") is not None:
    sys.exit("setup.sh: torchvision is installed in .venv; it breaks the CPU torch: pip uninstall torchvision")
print(f"setup.sh: ok (torch {torch.__version__}, CLIP vocabulary {len(load_clip_tokenizer())} tokens)")
PY
echo "$want" > "$STAMP"
