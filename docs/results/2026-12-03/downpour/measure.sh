#!/usr/bin/env bash
# Issue 15 measurements (Downpour), run from the repository root.
set -uo pipefail
cd /work/main
mlp_runs=(
  --run "sync dense|--optimizer momentum --lr 0.1"
  --run "downpour 1R 1S|--algorithm downpour --workers 1 --servers 1 --lr 0.03"
  --run "downpour 2R 1S|--algorithm downpour --workers 2 --servers 1 --lr 0.03"
  --run "downpour 4R 1S|--algorithm downpour --workers 4 --servers 1 --lr 0.03"
  --run "downpour 4R 2S|--algorithm downpour --workers 4 --servers 2 --lr 0.03"
  --run "downpour 4R 1S F=P=4|--algorithm downpour --workers 4 --servers 1 --n-fetch 4 --n-push 4 --lr 0.03"
)
embed_runs=(
  --run "sync dense|--lr 0.001"
  --run "downpour 4R 1S rows|--algorithm downpour --workers 4 --servers 1 --server-update adam:lr=0.001"
)
for net in loopback 1gbit; do
  ns=(); [[ $net != loopback ]] && ns=(--netns $net)
  echo "=== MLP, $net"
  bench/time_to_accuracy.sh "${ns[@]}" --out runs/dp-mlp-$net --eval-every 50 "${mlp_runs[@]}" \
    -- --model mlp --epochs 3 --seed 1
  echo "=== embed, $net"
  bench/time_to_accuracy.sh "${ns[@]}" --out runs/dp-embed-$net --eval-every 100 "${embed_runs[@]}" \
    -- --model embed --epochs 1 --seed 1
done
echo "=== kill and rejoin, loopback"
bench/downpour_rejoin.sh --out runs/dp-rejoin -- --model mlp --epochs 3 --lr 0.03
