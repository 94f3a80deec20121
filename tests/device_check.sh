#!/usr/bin/env bash
# The checks that need a GPU, as one script for a machine that has one (its own python3 with torch, pytest,
# matplotlib, sympy and scikit-learn, but no Jupyter and no network). Usage: bash tests/device_check.sh [OUTDIR]
#   1. chapters 3-11 executed as plain Python on the GPU (tests/gpu_notebooks.py), with time and peak CUDA memory;
#   2. the unit tests that touch CUDA (real CUDA or GPU, fake CUDA, compile; `-k`), for every optimizer and chapters 9-11;
#   3. `make bench`'s benchmark.
# Budget: a lent GPU gives a session 15 minutes in all. The whole unit suite there (pytest-xdist, 8 workers) took
# over 8 minutes on an H100 and was cut off at 75% (no failure until then), hence the `-k` selection; ALL=1 runs it all.
# Packages that machine lacks (optuna and its dependencies, lion-pytorch) may be carried as wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
python3 tests/gpu_notebooks.py --timeout 90 $(ls nbs/0[3-9]_*.ipynb nbs/1[0-2]_*.ipynb 2>/dev/null) 2>&1 \
  | tee "$out/notebooks.log" | grep -E "^(OK|FAILED|TIMEOUT)" ; nb=${PIPESTATUS[0]}
xdist=""; python3 -c "import xdist" 2>/dev/null && xdist="-n 8 -p no:benchmark"
select=(-k "cuda or CUDA or gpu or GPU or fake or Fake or compile"); [ "${ALL:-0}" = 1 ] && select=()
tests="tests/test_core.py tests/test_registry.py tests/test_sgd.py tests/test_adaptive.py tests/test_adam.py
       tests/test_shampoo.py tests/test_sign.py tests/test_muon.py tests/test_lbfgs.py
       tests/test_gradfree.py tests/test_attack.py tests/test_search.py tests/test_fused.py tests/test_fsdp.py
       tests/test_frontier.py tests/test_training.py"
python3 -m pytest -q -p no:cacheprovider $xdist -rfE "${select[@]}" $(ls $tests 2>/dev/null) 2>&1 | tee "$out/pytest.log" | tail -15
rc=${PIPESTATUS[0]}
python3 tests/bench.py --device cuda --quick --no-compile --out "$out/bench" 2>&1 | tee "$out/bench.log"
exit $(( rc || nb ))
