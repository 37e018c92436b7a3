#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, builds the Cython extension,
# and runs the whole suite. Extra arguments go to pytest (e.g. scripts/test.sh -k tls -x).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian tools the tests drive as real peers.
declare -A tool_package=([openssl]=openssl [curl]=curl [prometheus]=prometheus
                           [promtool]=prometheus [etcd]=etcd-server [etcdctl]=etcd-client)
missing=()
for tool in "${!tool_package[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${tool_package[$tool]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  python3 -m venv .venv
fi
echo "installing mgfast and its test dependencies into .venv (builds the Cython extension)"
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

# ---- type check and coverage (issue 14): mypy strict on mgfast; the suite under coverage ----
echo "mypy (strict, [tool.mypy] in pyproject.toml)"
.venv/bin/python -m mypy
status=0
.venv/bin/python -m coverage run -m pytest -q "$@" || status=$?
.venv/bin/python -m coverage report --skip-covered --sort=cover || true
exit "$status"
