#!/usr/bin/env bash
# Set up and run the whole test suite, on a machine with only Python and pip.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
PIP=("$PYTHON" -m pip install --disable-pip-version-check)

# A plain `torch` requirement pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel at hand.
if ! "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
  "${PIP[@]}" 'torch==2.13.0'
fi
"${PIP[@]}" -e '.[test]'
# The Lightning launcher's tests (ENV.USE_PL); `lightning` needs no torchvision.
"${PIP[@]}" 'lightning>=2.2'
# A reference some tests compare against (CLIP's tokenizer files); --no-deps keeps
# torchvision out: PyPI's torchvision breaks beside the CPU torch. torch-fidelity is left
# out on purpose: torchmetrics imports it whenever it is installed, and it imports torchvision.
"${PIP[@]}" --no-deps open-clip-torch

# The Studio's browser tests drive Debian's headless Chromium; install it when missing and
# apt can (root); without it those tests skip with the reason.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" -eq 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
    || echo "scripts/test.sh: chromium could not be installed; the studio browser tests will skip" >&2
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

# One pytest-xdist worker per core (at most 4; TEST_WORKERS=1 runs in this process), each with
# its share of the cores as torch threads; a test file stays on one worker (its module fixtures
# are built once). The CPU probe is taken once for the session (tests/conftest.py), so that no
# run's GEMM path depends on the load the other worker puts on the machine.
cores=$(nproc 2>/dev/null || echo 1)
workers="${TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / workers > 0 ? cores / workers : 1 ))}"
fi

# Arguments (paths, -k ...) replace the default `tests`. `-o addopts=` so that an ini `-q`
# does not hide pytest's closing summary line.
if [ "$#" -eq 0 ]; then set -- tests; fi
status=0
"$PYTHON" -m pytest -q -o addopts= ${parallel[@]+"${parallel[@]}"} "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
