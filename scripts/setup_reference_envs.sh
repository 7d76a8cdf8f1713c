#!/usr/bin/env bash
# Build the two reference environments used by tests/test_reference_parity.py:
#   DIR/ai2-olmo    the old OLMo trainer (ai2-olmo 0.6.0; pins ai2-olmo-core 0.1.0)
#   DIR/olmo-core   OLMo-core 3.0.0
# They cannot share a venv (ai2-olmo pins an old olmo-core), see
# shared/reference/checkpoints.md §6. Idempotent: a venv that already imports
# its library at the right version is left alone.
#
# usage: scripts/setup_reference_envs.sh [DIR]      (default: .venvs)
#        PYTHON=python3.11 scripts/setup_reference_envs.sh
set -euo pipefail

DIR="${1:-.venvs}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"   # resolves to the CPU build where one is on the pip find-links path
mkdir -p "$DIR"
start=$SECONDS

LOG="$DIR/setup.log"
: >"$LOG"
# pip's own output (and find-links warnings) go to $LOG; it is shown only on failure.
pip_q() {
    if ! "$1/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "[setup_reference_envs] pip install ${*:2} failed; full log: $LOG" >&2
        exit 1
    fi
}

ensure_venv() {  # ensure_venv NAME CHECK_SNIPPET INSTALL_FUNC
    local name=$1 check=$2 install=$3 venv="$DIR/$1" t0=$SECONDS
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        echo "[setup_reference_envs] $name: already OK ($venv)"
        return
    fi
    echo "[setup_reference_envs] $name: installing into $venv ..."
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$install" "$venv"
    if ! "$venv/bin/python" -c "$check" >>"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        echo "[setup_reference_envs] $name: install finished but the check failed; full log: $LOG" >&2
        exit 1
    fi
    echo "[setup_reference_envs] $name: done in $((SECONDS - t0)) s"
}

install_ai2_olmo() {
    pip_q "$1" "$TORCH_SPEC"
    pip_q "$1" "$TORCH_SPEC" ai2-olmo==0.6.0
    # olmo.util imports `datasets`, which ai2-olmo does not declare; unpinned it
    # pulls numpy 2 / pyarrow 26 and breaks ai2-olmo's numpy<2 requirement.
    pip_q "$1" "$TORCH_SPEC" "numpy<2" "pyarrow<20" datasets
}

install_olmo_core() {
    pip_q "$1" "$TORCH_SPEC"
    pip_q "$1" "$TORCH_SPEC" ai2-olmo-core==3.0.0 transformers==5.23.0
}

ensure_venv ai2-olmo "
import importlib.metadata as md, torch, olmo.model, olmo.config, numpy
assert md.version('ai2-olmo') == '0.6.0', md.version('ai2-olmo')
assert torch.__version__.startswith('2.13.0'), torch.__version__
assert numpy.__version__.startswith('1.'), numpy.__version__
" install_ai2_olmo

ensure_venv olmo-core "
import importlib.metadata as md, torch, olmo_core.nn.transformer, olmo_core.distributed.checkpoint
assert md.version('ai2-olmo-core') == '3.0.0', md.version('ai2-olmo-core')
assert torch.__version__.startswith('2.13.0'), torch.__version__
" install_olmo_core

echo "[setup_reference_envs] all reference envs ready in $((SECONDS - start)) s"
