#!/usr/bin/env bash
# The checks that need a GPU, as one script for a machine that has one (its own python3 with torch and pytest):
# the real-CUDA tests of the unit suite, then the benchmark. Usage: bash tests/device_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider -rs tests/test_core.py tests/test_registry.py tests/test_sgd.py 2>&1 | tee "$out/pytest.log" | tail -15
rc=${PIPESTATUS[0]}
python3 tests/bench_sgd.py --rounds 3 2>&1 | tee "$out/bench.log"
exit $rc
