#!/usr/bin/env bash
# The Helm chart tests: strict lint, renders (default and non-default values) validated
# against Kubernetes schemas, golden renders, values documentation, cross-chart (install
# order) consistency. No helm binary and no cluster: the Helm 4 engine comes from PyPI
# `helm-python-sdk`, the schemas from PyPI `kubernetes-validate`, both pinned in
# requirements.txt and installed into a cached venv.
#
#   bash charts/tests/run.sh                  # run the tests
#   UPDATE_GOLDEN=1 bash charts/tests/run.sh  # rewrite golden renders and README value tables
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/mesh-charts-venv"
stamp="$venv/.requirements"
if ! [ -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  echo "creating the chart test venv in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
exec "$venv/bin/python" "$here/test_charts.py" "$@"
