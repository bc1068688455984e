#!/usr/bin/env bash
# A real container engine for the agent's tests: Debian's dockerd (API 1.41) on a unix socket, with no bridge and
# no iptables (containers get loopback only), and Debian's docker-registry on 127.0.0.1:5000 holding three tiny
# busybox images (tiny:1 for running, tiny-pull:1 with a layer of its own for pull-progress tests, probe:1 with wget
# and nc for the network-isolation test). The service images come from `cargo xtask images`.
#
#   .ci/engine.sh [start]   install if needed, start both, print the DOCKER_HOST to export
#   .ci/engine.sh stop      stop both (by PID)
#
# Idempotent: a running engine and registry are reused.
set -euo pipefail
D=${ENGINE_DIR:-/tmp/commons-engine}
SOCK=$D/engine.sock
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

stop_pid() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" || true
  fi
  rm -f "$f"
}

if [ "${1:-start}" = stop ]; then
  stop_pid "$D/registry.pid"; stop_pid "$D/engine.pid"; rm -f "$SOCK"; exit 0
fi

mkdir -p "$D"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "engine: installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >"$D/apt.log" 2>&1
fi

ping_engine() { [ -S "$SOCK" ] && curl -sf --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }
docker_() { docker -H "unix://$SOCK" "$@"; }

if ! ping_engine; then
  stop_pid "$D/engine.pid"; rm -f "$SOCK"
  ok=0
  for drv in overlay2 vfs; do
    setsid dockerd --data-root "$D/data-$drv" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" -H "unix://$SOCK" \
      --storage-driver "$drv" --iptables=false --ip-masq=false --bridge=none >"$D/engine.log" 2>&1 </dev/null &
    echo $! >"$D/engine.pid"
    for _ in $(seq 1 300); do ping_engine && { ok=1; break; }; kill -0 "$(cat "$D/engine.pid")" 2>/dev/null || break; sleep 0.1; done
    [ "$ok" = 1 ] && break
    stop_pid "$D/engine.pid"; rm -f "$SOCK"
  done
  [ "$ok" = 1 ] || { echo "engine: dockerd failed to start; see $D/engine.log" >&2; tail -5 "$D/engine.log" >&2; exit 1; }
fi

if ! curl -sf http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
  stop_pid "$D/registry.pid"
  mkdir -p "$D/registry"
  cat >"$D/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $D/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:5000}
YML
  setsid docker-registry serve "$D/registry.yml" >"$D/registry.log" 2>&1 </dev/null &
  echo $! >"$D/registry.pid"
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break; sleep 0.1; done
fi

image_in_registry() { curl -sf "http://127.0.0.1:5000/v2/$1/manifests/1" -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' >/dev/null 2>&1; }
make_image() {  # $1 = name, $2 = extra bytes of its own layer, $3 = extra busybox applets
  local root=$D/rootfs-$1
  rm -rf "$root"; mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp /bin/busybox "$root/bin/busybox"
  for a in sh echo sleep cat ls true false env ps kill wc ${3:-}; do ln -sf busybox "$root/bin/$a"; done
  [ "$2" -gt 0 ] && head -c "$2" /dev/urandom >"$root/etc/payload"
  tar -C "$root" -cf "$D/$1.tar" .
  docker_ import --change 'CMD ["/bin/sh"]' "$D/$1.tar" "127.0.0.1:5000/$1:1" >/dev/null
  docker_ push "127.0.0.1:5000/$1:1" >/dev/null
}
image_in_registry tiny || make_image tiny 0
# probe: tiny with network tools, to show that a container without network reaches nothing.
image_in_registry probe || make_image probe 0 "wget nc"
if ! image_in_registry tiny-pull; then make_image tiny-pull 3000000; docker_ rmi "127.0.0.1:5000/tiny-pull:1" >/dev/null; fi
echo "DOCKER_HOST=unix://$SOCK"
