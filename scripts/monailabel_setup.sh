#!/usr/bin/env bash
# Creates the separate MONAI Label virtual environment (.venv-monailabel by default).
#
# Why separate: monailabel 0.8.5 pulls torchvision (through monai's `torchvision` extra), and the newest
# torchvision (0.29.1) pins torch==2.14.1 (a CUDA 13 build) and numpy 1.26.4. Installed into the main
# environment this would replace the CPU torch 2.13.0. torch and torchvision must be the same build flavour,
# so both are pinned here together.
#
# Usage: bash scripts/monailabel_setup.sh [VENV_DIR]      (env: PYTHON=python3.11, ML_VENV=...)
# Idempotent: an existing venv that already imports monailabel's bundle tasks and vmunet_monai is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${1:-${ML_VENV:-$ROOT/.venv-monailabel}}
PY=${PYTHON:-python3}
CHECK='import monailabel, torch, torchvision, monai, vmunet_monai; import monailabel.app; from monailabel.tasks.infer.bundle import BundleInferTask; from monailabel.tasks.train.bundle import BundleTrainTask; print("monailabel", monailabel.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__, "monai", monai.__version__)'

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  # a venv kept from an earlier checkout (e.g. in a cache folder): point its editable install at this one
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile --no-deps --no-build-isolation -e "$ROOT" >/dev/null
  echo "monailabel venv ready: $VENV"
  exit 0
fi

start=$(date +%s)
"$PY" -m venv "$VENV"
# --no-compile: byte-compiling torch's thousands of modules at install time is most of the install's CPU time
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile)
# Pin torch, torchvision and numpy for every later step so no install replaces them. The DICOM pins keep the
# packages monailabel imports at start-up compatible: pydicom-seg 0.4.1 needs pydicom 2 (pydicom 3 removed
# pydicom._storage_sopclass_uids), and dicomweb-client >= 0.60 / pynetdicom 3 need pydicom 3.
CONSTRAINTS="$VENV/monailabel-constraints.txt"
printf '%s\n' torch==2.14.1 torchvision==0.29.1 numpy==1.26.4 monai==1.6.1 monailabel==0.8.5 \
  "pydicom<3" "dicomweb-client<0.60" "pynetdicom<3" > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" torch==2.14.1 torchvision==0.29.1 "numpy==1.26.4"
"${PIP[@]}" -c "$CONSTRAINTS" "monai==1.6.1" "monailabel==0.8.5"
# This package, without letting it touch torch (its own dependencies are all satisfiable under the pins).
"${PIP[@]}" -c "$CONSTRAINTS" -e "$ROOT"
"$VENV/bin/python" -c "$CHECK"
echo "monailabel venv created in $(( $(date +%s) - start )) s: $VENV"
