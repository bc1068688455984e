#!/usr/bin/env bash
# Checks .ci/packages on a machine that has nothing: a clean Debian 12 root (mmdebstrap, minbase), this machine's
# rustup toolchain and cargo registry mounted in, the checkout mounted read-only. In turn, with only each set of
# packages installed: `.ci/packages server` then `cargo build` of the coordinator and the edge; `.ci/packages agent`
# then the headless agent; `.ci/packages app` then the desktop app. Not part of CI (about half an hour on 2 cores);
# run it as root after changing a dependency that links a system library.
#
#   .ci/fresh-root.sh [ROOT_DIR]     (default /var/tmp/commons-fresh-root; made once, reused)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-/var/tmp/commons-fresh-root}
command -v mmdebstrap >/dev/null || apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
[ -x "$root/bin/bash" ] || mmdebstrap --variant=minbase --include=ca-certificates bookworm "$root"

mounts=()
bind() { # bind SRC DST [ro]
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$root$2"; fi
  mounts=("$root$2" "${mounts[@]}")
}
cleanup() { for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m"; done; }
trap cleanup EXIT
bind /proc /proc
bind /dev /dev
bind "$HOME/.rustup" /root/.rustup ro
bind "$HOME/.cargo" /root/.cargo
bind "$PWD" /src ro
cp /etc/resolv.conf "$root/etc/resolv.conf"

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/root/.cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_TARGET_DIR=/var/tmp/target CARGO_INCREMENTAL=0 bash -c "cd /src && $1"
}
step() {
  echo "== fresh root: $1"
  local start=$SECONDS
  in_root "$2"
  echo "ok: $1 ($((SECONDS - start)) s)"
}
step "server packages, then the coordinator and the edge" \
  ".ci/packages server && cargo build --locked -p commons-coordinator -p commons-edge"
step "agent packages, then the headless agent" \
  ".ci/packages agent && cargo build --locked -p commons-agent"
step "app packages, then the desktop app" \
  ".ci/packages app && cargo build --locked -p commons"
