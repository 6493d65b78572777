#!/usr/bin/env bash
# The benchmark's cells on a lent GPU machine (issue 16), as one prepared command.
#
#   here, once:   make gpu-wheels        # .whl/: pycocotools and plotly for the GPU image's Python
#   there:        bash scripts/gpu_cells.sh [CELLS]      # the device tool's run, carry [".whl"]
#
# The GPU image has PyTorch, torchvision, NumPy and SciPy but no pycocotools or plotly, and
# its Python (3.12) is not the project's, so the package runs from this folder (PYTHONPATH)
# instead of being installed. In order, each step writing into $OUT as it ends, so that a run
# stopped at its time limit still returns what it finished:
#   1. gpu.txt: torch, CUDA and the GPU's name;
#   2. test_cuda.log: tests/test_cuda.py (CUDA training with and without --amp, a GPU checkpoint
#      on the CPU, GPU against CPU detections, the smoke benchmark on CUDA);
#   3. every cell of CELLS (default: the seed-0 main cells elastic, fixed φ = 1, multi-scale)
#      trained and evaluated with --device cuda --amp into benchmarks/gpu/, its cell file copied
#      to $OUT as soon as it is written; bench.log holds the commands' output.
# Back here, copy the cell files into benchmarks/gpu/cells/ and run
#   elastic-lab bench --out benchmarks/gpu --report-only --no-png
# for benchmarks/gpu/results.md: the GPU cells beside the CPU ones, each naming its device.
#
# DEVICE (default cuda), BENCH_OUT (default benchmarks/gpu), BENCH_ARGS (extra bench options,
# e.g. --smoke) and WHEELS (default .whl) exist so that tests/test_bench.py can run this script
# on the CPU.
set -uo pipefail
OUT=${OUT:-benchmarks/gpu/out}
DEVICE=${DEVICE:-cuda}
BENCH_OUT=${BENCH_OUT:-benchmarks/gpu}
CELLS=${1:-elastic_s0,fixed_1.00_s0,multiscale_s0}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
    | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
echo "tests/test_cuda.py: exit $?" | tee -a "$OUT/gpu.txt"
for cell in ${CELLS//,/ }; do
    # shellcheck disable=SC2086  # BENCH_ARGS: several options
    python3 -m elastic_lab.cli bench --data "$BENCH_OUT/synth" --out "$BENCH_OUT" \
        --device "$DEVICE" --amp --no-png --cells "$cell" ${BENCH_ARGS:-} >> "$OUT/bench.log" 2>&1
    echo "$cell: exit $?" | tee -a "$OUT/gpu.txt"
    cp "$BENCH_OUT/cells/$cell.json" "$OUT/" 2>/dev/null
done
