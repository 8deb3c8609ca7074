#!/usr/bin/env bash
# Rebuild every study's results table from its results roots, then its report from the table alone.
# STORES_DIR holds the roots laid out as the committed stores were (saflex_fair_results/ and
# aa/threads1/, aa/threads2/); they are in git history:
#   git archive ac8a6a8 reports/studies | tar -x -C DIR && studies/build_tables.sh DIR/reports/studies
# Keep the root folders' names: a report names the store it came from by its folder name. Set SAFLEX_DATA
# to the data root: older records hold no selection-split majority rate, so it is recomputed from the data.
set -euo pipefail
S=${1:?usage: studies/build_tables.sh STORES_DIR (holding saflex_fair_results/ and aa/threads1/, aa/threads2/)}
S=$(cd "$S" && pwd)
cd "$(dirname "$0")/.."
saflex-bench study saflex_medmnist --build-table "$S/saflex_fair_results"
# learned: its committed table holds the learners as they were before issue 26 (semantics 1), which today's
# code no longer serves as done, so it is not rebuilt from a store (studies/learned/README.md)
saflex-bench study noise_floor --build-table "$S/aa/threads1" "$S/aa/threads2"
for s in noise_floor saflex_medmnist learned; do saflex-bench study "$s"; done
