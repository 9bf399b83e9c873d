#!/usr/bin/env bash
# Regenerate the reference results from the reference checkpoints (results/checkpoints/reference/).
#
#   bash results/reference/reproduce.sh ci          # results/reference/ci/*.csv   (CI regression set)
#   bash results/reference/reproduce.sh published   # results/reference/*.csv + tables/ + figures
#
# Both run on CPU. Each task is one `lmconv-bench run` (resumable: rerun the script after an
# interruption) followed by `lmconv-bench freeze`, which writes the reference CSV with its command,
# git commit, date and image ids. Existing CSVs are replaced (this script's purpose); runs go to
# results/runs/reference-*/ (not tracked by git).
#
# Orders per task, as in the paper: centre occlusions with the centre-last orders, halves and
# random occlusions with the S-curve orders; each with its 8-order ensemble. The PixelCNN++ raster
# baseline is evaluated on every task.
set -euo pipefail
cd "$(dirname "$0")/../.."

mode="${1:-published}"
case "$mode" in
    ci)
        datasets="mnist"
        families="center top_half random"
        n_images=16
        out_csv="results/reference/ci"
        ;;
    published)
        datasets="${DATASETS:-mnist cifar10 celeba32}"
        families="center top_half random"
        n_images="${N_IMAGES:-128}"
        out_csv="results/reference"
        ;;
    *)
        echo "usage: $0 ci|published" >&2
        exit 2
        ;;
esac

for ds in $datasets; do
    for fam in $families; do
        task="${ds}_${fam}"
        if [ "$fam" = center ]; then orders=center_last; else orders=s_curve; fi
        run_dir="results/runs/reference-${mode}-${task}"
        lmconv-bench run --task "$task" --orders "$orders" --limit "$n_images" --out "$run_dir" --no-progress
        lmconv-bench freeze "$run_dir" --out "${out_csv}/${task}.csv" --force
    done
done

if [ "$mode" = published ]; then
    # Tables over every published run present (DATASETS may name a subset; earlier runs stay in).
    all_runs=(results/runs/reference-published-*)
    lmconv-bench report "${all_runs[@]}" --format markdown --out results/reference/tables
    lmconv-bench report "${all_runs[@]}" --format latex --out results/reference/tables
fi
