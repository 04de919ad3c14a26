#!/usr/bin/env bash
# The main job on the embedded tiny model (random weights): export it to a bundle (skipped when unchanged), then
# prompt -> mp4 on CPU. Usage: bash scripts/demo.sh ["a prompt"] [output.mp4]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
prompt=${1:-"a tiny green monster and a big flying UFO"}
out=${2:-tiny.mp4}
.venv/bin/t2vrt export tiny --out tiny-bundle
.venv/bin/t2vrt generate "$prompt" --bundle tiny-bundle -o "$out" --overwrite
