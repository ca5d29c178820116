#!/usr/bin/env bash
# Does a fresh Debian 12 (bookworm) machine build vxdp with nothing but scripts/setup.sh?
#
# Builds a clean bookworm root with debootstrap (--variant=minbase: less than any real
# install has, so whatever it lacks setup.sh must install), copies this working tree into it
# (tracked and untracked files, not what .gitignore ignores, so uncommitted edits to setup.sh
# are checked too), makes this machine's Rust toolchain visible read-only (rustup's home and
# cargo's bin directory), then inside the root, as a new user would:
#
#   scripts/setup.sh
#   cargo build --workspace --all-targets
#   cargo test --workspace --lib --bins      (unit tests only: no namespaces, TAP or XDP)
#
# CARGO_HOME inside the root starts empty, so every crate is fetched from crates.io as on a
# new machine; nothing of this machine's registry cache is used.
#
# It leaves nothing behind: the root lives under /var/tmp and is deleted at the end, also on
# failure or Ctrl-C. The mounts (proc, sys, dev, the toolchain) are made in a private mount
# namespace (unshare), so the host never sees them and they vanish with it even if this script
# is killed; they are also unmounted explicitly, and the root is only deleted once nothing is
# mounted below it.
#
#   sudo scripts/fresh-machine-check.sh               # debootstrap, setup, build, unit tests
#   sudo scripts/fresh-machine-check.sh --build-only  # skip the unit tests
#
# Environment: FRESH_MIRROR (default http://deb.debian.org/debian), FRESH_SUITE (bookworm).
# Needs root, network access to the Debian mirror and crates.io, about 6 GB in /var/tmp, and a
# rustup toolchain (`cargo` on PATH). Installs debootstrap here if it is missing. Took 6-8
# minutes on 2 shared CPUs, most of it the build (see the README).
set -euo pipefail

MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
SUITE=${FRESH_SUITE:-bookworm}
# Where the host's toolchain appears inside the root.
RUSTUP_IN=/opt/rustup
CARGO_BIN_IN=/opt/cargo-bin

say() { printf 'fresh-machine-check: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

# Mount points at or below $1 in this mount namespace, deepest first.
mounts_below() {
  awk -v r="$1" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# ---------------------------------------------------------------------------------------------
# Inner part: runs in a private mount namespace made by the outer part; $1 is the root.
inner() {
  # Global, not local: the EXIT trap runs after this function has returned.
  INNER_ROOT=$1
  local root=$1 unit_tests=$2 rustup_home=$3 cargo_bin=$4
  local started=$SECONDS

  inner_cleanup() {
    local rc=$?
    set +e
    # Processes still running inside the root (a package's daemon) were started by this check:
    # end them by PID so that nothing keeps the mounts busy.
    local pid
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$INNER_ROOT" ] || continue
      say "stopping PID $pid left running in the root ($(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null))"
      kill "$pid" 2>/dev/null
    done
    local m
    for m in $(mounts_below "$INNER_ROOT"); do
      umount "$m" 2>/dev/null || umount -l "$m"
    done
    exit "$rc"
  }
  trap inner_cleanup EXIT
  trap 'exit 130' INT TERM

  mount -t proc proc "$root/proc"
  mount -t sysfs -o ro sysfs "$root/sys"
  mount -t devtmpfs -o mode=0755,nosuid devtmpfs "$root/dev"
  mkdir -p "$root/dev/pts"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
  mkdir -p "$root$RUSTUP_IN" "$root$CARGO_BIN_IN"
  mount --bind "$rustup_home" "$root$RUSTUP_IN"
  mount -o remount,bind,ro "$root$RUSTUP_IN"
  mount --bind "$cargo_bin" "$root$CARGO_BIN_IN"
  mount -o remount,bind,ro "$root$CARGO_BIN_IN"
  cp /etc/resolv.conf "$root/etc/resolv.conf"

  local tests_cmd=true
  if [ "$unit_tests" = 1 ]; then
    tests_cmd='step "unit tests (cargo test --workspace --lib --bins)" cargo test --workspace --lib --bins'
  fi
  # A login-like environment: nothing of this shell's leaks in but the toolchain's location.
  env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH="$CARGO_BIN_IN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    RUSTUP_HOME="$RUSTUP_IN" CARGO_HOME=/root/.cargo CARGO_TERM_COLOR=never \
    chroot "$root" /bin/bash -euo pipefail -c '
      step() {
        local what=$1 t=$SECONDS; shift
        echo "fresh-machine-check: [chroot] $what"
        "$@"
        echo "fresh-machine-check: [chroot] $what: done in $((SECONDS - t)) s"
      }
      cd /src
      step "scripts/setup.sh" scripts/setup.sh
      step "cargo build --workspace --all-targets" cargo build --workspace --all-targets
      '"$tests_cmd"'
    '
  say "inside the root: everything passed in $((SECONDS - started)) s"
}

if [ "${1:-}" = "--inner" ]; then
  shift
  inner "$@"
  exit
fi

# ---------------------------------------------------------------------------------------------
# Outer part.
UNIT_TESTS=1
case "${1:-}" in
  "") ;;
  --build-only) UNIT_TESTS=0 ;;
  -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
  *) die "unknown argument $1 (try --help)" ;;
esac

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts)"
cd "$(dirname "$0")/.."
SRC=$PWD

CARGO=$(command -v cargo) || die "cargo is not on PATH: install Rust with rustup first"
CARGO_BIN=$(dirname "$(readlink -f "$CARGO")")
# rustup's proxies (cargo, rustc) live next to rustup; a cargo without rustup cannot be moved.
[ -x "$CARGO_BIN/rustup" ] || CARGO_BIN=$(dirname "$CARGO")
[ -x "$CARGO_BIN/rustup" ] || die "$CARGO is not a rustup proxy: this check needs a rustup toolchain"
RUSTUP_HOME_DIR=$("$CARGO_BIN/rustup" show home) || die "rustup show home failed"
[ -d "$RUSTUP_HOME_DIR/toolchains" ] || die "$RUSTUP_HOME_DIR has no toolchains"

if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi
command -v unshare >/dev/null || die "unshare (util-linux) is missing"

ROOT=$(mktemp -d /var/tmp/vxdp-fresh.XXXXXX)
# mktemp makes it 0700; as / of the new system it must be 0755, or every user but root (apt's
# _apt, etcd, the tests' unprivileged helpers) is locked out of the whole tree.
chmod 0755 "$ROOT"
START=$SECONDS

cleanup() {
  local rc=$?
  set +e
  # The mounts were made in the inner namespace only; here, in the host's, nothing may be
  # mounted below the root. Check anyway: rm -rf must never reach into a mounted toolchain.
  local left
  left=$(mounts_below "$ROOT")
  if [ -n "$left" ]; then
    say "still mounted below $ROOT, NOT deleting it:" >&2
    echo "$left" >&2
    say "unmount them (umount -R $ROOT) and delete $ROOT by hand" >&2
    rc=1
  else
    rm -rf "$ROOT"
  fi
  if [ "$rc" -eq 0 ]; then
    say "PASSED in $((SECONDS - START)) s (root removed)"
  else
    say "FAILED (exit $rc) after $((SECONDS - START)) s (root removed unless said otherwise)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "root $ROOT; toolchain $RUSTUP_HOME_DIR and $CARGO_BIN (read-only inside)"
t=$SECONDS
say "debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 || {
  tail -n 30 "$ROOT.debootstrap.log" >&2
  rm -f "$ROOT.debootstrap.log"
  die "debootstrap failed"
}
rm -f "$ROOT.debootstrap.log"
say "debootstrap: done in $((SECONDS - t)) s"

# Certificate authorities this site adds to the system's (/usr/local/share/ca-certificates: a
# TLS-intercepting proxy, a company CA) belong to the network, not to vxdp: a new machine on this
# network has them too. They only take effect once setup.sh installs the ca-certificates package
# (its postinst runs update-ca-certificates), so a setup.sh without it still fails here.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  say "copied this site's CAs: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi

# The tree a new user would have: what git tracks plus new files it does not ignore.
mkdir "$ROOT/src"
# (A file deleted in the working tree but still tracked is left out.)
git -C "$SRC" ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do
      if [ -e "$SRC/$f" ] || [ -L "$SRC/$f" ]; then printf '%s\0' "$f"; fi
    done \
  | tar -C "$SRC" --null -T - -cf - \
  | tar -C "$ROOT/src" -xf -

unshare --mount --propagation private "$0" --inner "$ROOT" "$UNIT_TESTS" "$RUSTUP_HOME_DIR" "$CARGO_BIN"
