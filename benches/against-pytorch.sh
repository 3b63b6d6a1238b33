#!/usr/bin/env bash
# Interleaved rounds of ours and PyTorch on the workloads of shared/BENCHMARKS.md, one
# folder a round; `cargo xtask against-pytorch OUT/round-*` prints the table.
#
#   benches/against-pytorch.sh OUT [ROUNDS] [PARTS]  # ROUNDS defaults to 3
#
# Each round runs, in this order: the FMA peak; our C and G rows (`nn-bench run`, 1
# and 2 threads, the Winograd rows with them); conv.py and gemm.py; our T3 step;
# resnet.py --bench; the example's T2 (exact and --winograd) and T1 runs; train.py's
# T2 and T1; the peak again. Our side is built once, before the first round. PARTS
# `training` runs the peaks and training runs alone (a third of a round's time);
# the default is `all`.
#
# Needs GNU time (`apt-get install time`) for the peak memory of the runs.
# Environment: PY, a Python with torch and numpy (default: python3);
# PYTORCH_REFERENCE, the scripts' folder (default: ../shared/pytorch-reference beside
# the repository); FASHION_MNIST_DIR as for the example. The machine should be idle:
# every figure is a median over repetitions, but a build or a test beside it moves
# both sides.
set -euo pipefail

usage="usage: benches/against-pytorch.sh OUT [ROUNDS] [all|training]"
out=${1:?$usage}
rounds=${2:-3}
parts=${3:-all}
case $parts in all | training) ;; *) echo "$usage" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PY:-python3}
reference=${PYTORCH_REFERENCE:-$root/../shared/pytorch-reference}
threads=2
export OMP_NUM_THREADS=$threads

cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p nn-benches --bin nn-bench
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p nn-train --example fashion_mnist
target=${CARGO_TARGET_DIR:-$root/target}
bench=$target/release/nn-bench
example=$target/release/examples/fashion_mnist
rows=(C1 C2 C3 C4 C5 C6 C7 C8)

for round in $(seq 1 "$rounds"); do
  dir=$out/round-$round
  mkdir -p "$dir"
  echo "round $round of $rounds → $dir"
  "$bench" peak > "$dir/peak-before.json"
  if [ "$parts" = all ]; then
    filters=(--filter G3 --filter G4)
    for row in "${rows[@]}"; do filters+=(--filter "$row"); done
    "$bench" run "${filters[@]}" > "$dir/ours.json"
    only=$(IFS=,; echo "${rows[*]}")
    PT_RESULTS=$dir "$py" "$reference/conv.py" --threads 1,$threads --only "$only" > "$dir/pytorch-conv.log" 2>&1
    PT_RESULTS=$dir "$py" "$reference/gemm.py" --threads 1,$threads > "$dir/pytorch-gemm.log" 2>&1
    "$bench" run --filter T3 > "$dir/t3.json"
    PT_RESULTS=$dir "$py" "$reference/resnet.py" --threads $threads --bench > "$dir/pytorch-t3.log" 2>&1
  fi
  for run in "cnn --model cnn" "cnnw --model cnn --winograd" "mlp --model mlp"; do
    set -- $run
    name=$1
    shift
    /usr/bin/time -v "$example" "$@" --threads $threads --out "$dir/$name" > "$dir/$name.log" 2>&1
  done
  PT_RESULTS=$dir "$py" "$reference/train.py" --runs T2:$threads,T1:$threads > "$dir/pytorch-train.log" 2>&1
  "$bench" peak > "$dir/peak-after.json"
done
echo "cargo xtask against-pytorch $out/round-*"
