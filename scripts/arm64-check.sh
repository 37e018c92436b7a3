#!/usr/bin/env bash
# Runs the test suite on ARM64 (aarch64) on an x86_64 Debian bookworm host, under qemu
# user-mode emulation in a cached arm64 Debian chroot: the same Python 3.11, the same Debian
# peers (openssl, curl, prometheus, etcd) and the aarch64 wheels a real ARM64 host gets, with
# the Cython extension compiled by the arm64 gcc. See docs/arm64-results.md for what it proved.
#
#   scripts/arm64-check.sh                 the whole suite (about 25 min of pytest)
#   scripts/arm64-check.sh --subset ci     the reduced subset .ci/run runs (ARM64_CI_SUBSET)
#   scripts/arm64-check.sh -- -k tls -x    extra arguments after -- go to pytest
#
# Environment: MGFAST_ARM64_ROOT (cache dir, default /var/cache/mgfast-arm64: the chroot lives
# outside the checkout and survives it), MGFAST_TIME_SCALE (test deadline factor, default 6:
# emulation runs about 6x slower than native), MGFAST_ARM64_MIRROR (Debian mirror).
# Needs root (debootstrap, chroot, mount). Exit status: pytest's, or 3 if the host cannot
# emulate ARM64 (binfmt_misc not mountable, e.g. an unprivileged container).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD

# The representative subset CI runs (a few minutes under emulation): the Cython codec (every
# codec test, savant-rs's aarch64 wheel as an oracle), the Cython ZeroMQ I/O and messages; TLS
# with the seed's certificates and live CRLs, and TLS alerts; savant-rs peers end to end through
# client and server processes; the server's workers sharing the port, its egress child and a
# dead worker replaced; SIGTERM draining requests in flight, and signals during start-up; basic
# auth against a real etcd.
ARM64_CI_SUBSET=(
  tests/test_media.py
  tests/test_zmq_io.py
  tests/test_messages.py
  tests/test_startup_signals.py
  "tests/test_mtls.py::test_seed_guide_server_section_revocation_without_restart"
  "tests/test_mtls.py::test_unknown_ca_and_missing_certificate_get_their_alerts"
  "tests/test_client.py::test_savant_writer_to_client_to_server_to_savant_reader[router-bind-ipc]"
  "tests/test_server.py::test_savant_reader_receives_byte_identical_frames[dealer-connect-tcp]"
  "tests/test_supervision.py::test_two_workers_and_an_egress_run_and_a_dead_worker_is_replaced"
  "tests/test_supervision.py::test_sigterm_answers_requests_in_flight_and_exits_0"
  "tests/test_auth_server.py::test_upstream_guide_testing_section_with_curl"
)

subset=full
while (($#)); do
  case "$1" in
    --subset) subset=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
pytest_args=("$@")

root=${MGFAST_ARM64_ROOT:-/var/cache/mgfast-arm64}
chroot_dir=$root/bookworm-arm64
mirror=${MGFAST_ARM64_MIRROR:-http://deb.debian.org/debian}
export MGFAST_TIME_SCALE=${MGFAST_TIME_SCALE:-6}
venv=/opt/mgfast-venv          # inside the chroot, outside the copied checkout: survives it
inner_src=/src/mgfast

step() { echo "arm64-check: $(date +%H:%M:%S) $*"; }
cannot_emulate() { echo "arm64-check: CANNOT EMULATE ARM64 HERE: $*" >&2; exit 3; }

if [ "$(uname -m)" = aarch64 ]; then
  step "native ARM64 host: no emulation needed, running scripts/test.sh"
  exec bash scripts/test.sh "${pytest_args[@]}"
fi
[ "$(id -u)" = 0 ] || { echo "arm64-check: needs root (debootstrap, chroot, mount)" >&2; exit 2; }

# 1. Host tools. qemu-user-static's binfmt entry carries the F flag: the kernel opens the
# interpreter at registration, so arm64 binaries run inside the chroot without a copy of qemu.
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  step "installing host packages: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 2. binfmt_misc mounted and qemu-aarch64 registered with F.
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e $binfmt/register ]; then
  mount -t binfmt_misc binfmt_misc $binfmt 2>/dev/null \
    || cannot_emulate "binfmt_misc is not mounted and mounting it failed (no privilege: run on the host or in a --privileged container)"
fi
if ! grep -q '^enabled' $binfmt/qemu-aarch64 2>/dev/null; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
fi
grep -q '^enabled' $binfmt/qemu-aarch64 2>/dev/null \
  || cannot_emulate "qemu-aarch64 is not registered in $binfmt (update-binfmts --enable qemu-aarch64 failed)"
grep -q '^flags:.*F' $binfmt/qemu-aarch64 \
  || cannot_emulate "qemu-aarch64 is registered without the F flag ($(grep flags $binfmt/qemu-aarch64)); binaries in the chroot would not find the interpreter"

# One run at a time per cache: another run's copy, mounts and unmounts would pull the chroot
# from under this one.
mkdir -p "$root"
exec 9>"$root/lock"
if ! flock -n 9; then
  step "another arm64-check runs on $root; waiting for it"
  t0=$SECONDS
  flock 9
  step "waited $((SECONDS - t0)) s"
fi

# 3. The chroot: debootstrapped once into a .partial directory, renamed when complete, so an
# interrupted run starts over instead of reusing half a system.
mkdir -p "$root"
if [ ! -e "$chroot_dir/.mgfast-debootstrap-done" ]; then
  rm -rf "$chroot_dir.partial"
  step "debootstrap --arch=arm64 bookworm into $chroot_dir (about 5 min, once)"
  t0=$SECONDS
  debootstrap --arch=arm64 --variant=minbase bookworm "$chroot_dir.partial" "$mirror" >"$root/debootstrap.log" 2>&1 \
    || { tail -20 "$root/debootstrap.log" >&2; echo "arm64-check: debootstrap failed (log: $root/debootstrap.log)" >&2; exit 1; }
  touch "$chroot_dir.partial/.mgfast-debootstrap-done"
  rm -rf "$chroot_dir"
  mv "$chroot_dir.partial" "$chroot_dir"
  step "debootstrap done in $((SECONDS - t0)) s"
fi
chroot "$chroot_dir" /bin/true || cannot_emulate "an arm64 binary does not run in $chroot_dir"

# Mounts for the chroot's lifetime; undone on exit, innermost first.
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind SOURCE TARGET-IN-CHROOT [ro]
  local target=$chroot_dir$2
  mountpoint -q "$target" && return 0
  if [ -d "$1" ]; then mkdir -p "$target"; else mkdir -p "$(dirname "$target")"; touch "$target"; fi
  mount --bind "$1" "$target"
  mounted+=("$target")
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$target"
  return 0
}
mountpoint -q "$chroot_dir/proc" || { mount -t proc proc "$chroot_dir/proc"; mounted+=("$chroot_dir/proc"); }
bind /sys /sys ro
bind /dev /dev
bind /dev/pts /dev/pts
mountpoint -q "$chroot_dir/dev/shm" || true   # /dev/shm comes with /dev
cp /etc/resolv.conf /etc/hosts "$chroot_dir/etc/"

# pip inside the chroot uses the host's configuration: its config files, and every local
# directory they or PIP_* variables name (find-links, file:// indexes), bound read-only.
rm -rf "$chroot_dir/etc/xdg/pip" "$chroot_dir/root/.config/pip" "$chroot_dir/etc/pip.conf"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$chroot_dir/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$chroot_dir/etc/xdg" && cp -r /etc/xdg/pip "$chroot_dir/etc/xdg/pip"
[ -d "$HOME/.config/pip" ] && mkdir -p "$chroot_dir/root/.config" && cp -r "$HOME/.config/pip" "$chroot_dir/root/.config/pip"
mapfile -t pip_dirs < <(
  { cat /etc/pip.conf /etc/xdg/pip/*.conf "$HOME"/.config/pip/*.conf 2>/dev/null || true
    env | grep '^PIP_' || true; } \
    | grep -o '\(file://\)\?/[^ ",=]*' | sed 's|^file://||' | sort -u)
for dir in "${pip_dirs[@]}"; do
  case "$dir" in /etc/*|/proc/*|/sys/*|/dev/*) continue ;; esac
  # A local PEP 503 index (file:///x/simple) links to files beside it (../../files/...): bind
  # the repository, the parent of simple/.
  [ "$(basename "$dir")" = simple ] && dir=$(dirname "$dir")
  if [ -d "$dir" ]; then bind "$dir" "$dir" ro; fi
  [ -f "$dir" ] && [ ! -e "$chroot_dir$dir" ] && { mkdir -p "$(dirname "$chroot_dir$dir")"; cp "$dir" "$chroot_dir$dir"; }
done
# The host's extra CA certificates (e.g. an egress proxy's), trusted by the chroot's bundle.
mkdir -p "$chroot_dir/usr/local/share/ca-certificates"
cp -r /usr/local/share/ca-certificates/. "$chroot_dir/usr/local/share/ca-certificates/" 2>/dev/null || true

in_chroot() {  # a clean environment plus the host's PIP_* variables
  local pipenv
  mapfile -t pipenv < <(env | grep '^PIP_' || true)
  chroot "$chroot_dir" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    MGFAST_TIME_SCALE="$MGFAST_TIME_SCALE" "${pipenv[@]}" "$@"
}

# 4. Debian packages: Python and its build tools, and the peers scripts/test.sh installs
# (openssl, curl, prometheus/promtool, etcd/etcdctl). Redone only when this list changes.
packages="ca-certificates python3 python3-venv python3-dev gcc libc6-dev openssl curl prometheus etcd-server etcd-client"
if [ "$(cat "$chroot_dir/.mgfast-packages" 2>/dev/null)" != "$packages" ]; then
  step "apt-get install in the chroot: $packages (a few minutes, once)"
  t0=$SECONDS
  printf '#!/bin/sh\nexit 101\n' >"$chroot_dir/usr/sbin/policy-rc.d"  # no daemons start in the chroot
  chmod +x "$chroot_dir/usr/sbin/policy-rc.d"
  in_chroot apt-get update -qq
  # shellcheck disable=SC2086
  in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
  in_chroot apt-get clean
  echo "$packages" >"$chroot_dir/.mgfast-packages"
  step "packages installed in $((SECONDS - t0)) s"
fi
in_chroot update-ca-certificates >/dev/null 2>&1

# 5. The checkout (tracked and untracked-but-not-ignored files, i.e. the working tree as git
# sees it) copied in. Build products (the compiled extension, build/) stay from the last run,
# so an unchanged ext/*.pyx is not recompiled under emulation; files gone from the checkout go.
dest=$chroot_dir$inner_src
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
  | tar -C "$src" --null -T - -cf - | tar -C "$dest" -xf -
comm -23 <(cd "$dest" && find . -type f -not -path './build/*' -not -path '*/__pycache__/*' \
             -not -name '*.so' -not -name '*.c' -not -path '*.egg-info/*' -not -path './.hypothesis/*' \
             -not -path './.pytest_cache/*' | sed 's|^\./||' | sort) \
         <(git ls-files --cached --others --exclude-standard | sort) \
  | (cd "$dest" && xargs -r -d '\n' rm -f)

# 6. The arm64 venv and the editable install scripts/test.sh does (the tests import the
# in-place extension).
if [ ! -x "$chroot_dir$venv/bin/python" ]; then
  step "creating the arm64 venv $venv"
  in_chroot python3 -m venv "$venv"
fi
# Only when what pip builds or resolves changed (pyproject.toml, setup.py, ext/, mgfast/*.pxd): the install
# is editable, so mgfast/ and tests/ are read from the copy in place.
stamp=$( (cd "$src" && cat pyproject.toml setup.py ext/*.pyx mgfast/*.pxd) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$chroot_dir/.mgfast-install-stamp" 2>/dev/null)" = "$stamp" ] \
   && in_chroot sh -c "cd $inner_src && $venv/bin/python -c 'import mgfast._media, mgfast._zmq_io'" 2>/dev/null; then
  step "pip install -e .[test]: nothing it builds changed since the last run, skipped"
else
  step "pip install -e .[test] in the arm64 venv (aarch64 wheels; the Cython build under emulation)"
  t0=$SECONDS
  rm -f "$chroot_dir/.mgfast-install-stamp"
  # (pip's warnings about the host's file:// index missing a project are noise here.)
  if ! in_chroot sh -c "cd $inner_src && $venv/bin/pip install -q --disable-pip-version-check -e '.[test]'" 2>&1 \
       | { grep -v "^WARNING: Location 'file://" || true; }; then
    echo "arm64-check: pip install failed in the chroot" >&2; exit 1
  fi
  echo "$stamp" >"$chroot_dir/.mgfast-install-stamp"
  step "pip install done in $((SECONDS - t0)) s"
fi
in_chroot sh -c "cd $inner_src && $venv/bin/python -c 'import platform, mgfast._media as m; print(\"arm64-check: extension\", m.__file__, \"on\", platform.machine())'"

# 7. The tests.
if [ "$subset" = ci ]; then
  tests=("${ARM64_CI_SUBSET[@]}")
elif [ "$subset" = full ]; then
  tests=()
else
  echo "arm64-check: --subset is ci or full, not $subset" >&2; exit 2
fi
step "pytest ($subset, MGFAST_TIME_SCALE=$MGFAST_TIME_SCALE) on aarch64"
t0=$SECONDS
set +e
in_chroot bash -c 'cd "$1" && shift && exec "$@"' _ "$inner_src" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}" "${pytest_args[@]}" | tee "$root/last-pytest.log"
rc=${PIPESTATUS[0]}
set -e
step "pytest took $((SECONDS - t0)) s, exit $rc"
echo "arm64 (aarch64, qemu user-mode): $(grep -E '(passed|failed|error)' "$root/last-pytest.log" | tail -1)"
exit "$rc"
