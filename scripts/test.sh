#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, builds the Cython extension,
# and runs the whole suite. Extra arguments go to pytest (e.g. scripts/test.sh -k tls -x).
#
# --python X.Y runs it on another interpreter in its own .venv-X.Y (pyenv's newest X.Y.*, else
# pythonX.Y from PATH), e.g. scripts/test.sh --python 3.13; the default is python3 in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

python=python3
venv=.venv
if [ "${1:-}" = --python ]; then
  version=${2:?--python needs a version such as 3.12}
  shift 2
  venv=.venv-$version
  # pyenv's versions first (its shims on PATH fail for a version that is not selected), the
  # newest X.Y.* (sort -V: 3.12.10 after 3.12.9); else pythonX.Y from PATH.
  python=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/"python$version" 2>/dev/null \
             | sort -V | tail -1)
  [ -n "$python" ] || python=$(command -v "python$version" || true)
  [ -n "$python" ] || { echo "test.sh: no python$version on PATH or in pyenv" >&2; exit 2; }
fi

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

if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $python"
  "$python" -m venv "$venv"
fi
echo "installing mgfast and its test dependencies into $venv (builds the Cython extension)"
"$venv/bin/pip" install -q --disable-pip-version-check -e '.[test]'

# ---- type check and coverage (issue 14): mypy strict on mgfast; the suite under coverage ----
echo "mypy (strict, [tool.mypy] in pyproject.toml)"
"$venv/bin/python" -m mypy
status=0
"$venv/bin/python" -m coverage run -m pytest -q "$@" || status=$?
"$venv/bin/python" -m coverage report --skip-covered --sort=cover || true
exit "$status"
