# Shared settings for the local control plane scripts. Sourced, never run.
# shellcheck shell=bash

CLUSTER_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_HERE/../.." && pwd)
# The pinned versions live in the wrapper modules' go.mod files; nowhere else.
GO_MODULES="$CLUSTER_HERE/go"
CACHE_DIR=${PERENNIAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/perennial}
STATE_DIR=${PERENNIAL_CLUSTER_DIR:-$REPO_ROOT/e2e/.cluster}
KUBECONFIG_PATH="$STATE_DIR/kubeconfig"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# module_version DIR MODULE: the version a wrapper module pins or selects (also an
# indirect requirement, such as the k8s.io libraries Helm is built with).
module_version() {
  sed -n "s#^require $2 \(v[^ ]*\)#\1#p; s#^[[:space:]]*$2 \(v[^ ]*\)\( // indirect\)\{0,1\}\$#\1#p" "$GO_MODULES/$1/go.mod" | head -n 1
}

# build_revision NAME: bump a component's number when its build flags change, so that its
# cached binaries, and only its, are rebuilt.
# helm 2: the version and Kubernetes version ldflags of Helm's own release build.
build_revision() {
  case "$1" in
    helm) echo 2 ;;
    *) echo 1 ;;
  esac
}

# bin_dir NAME: where one component's binaries are cached, keyed by its go.mod, go.sum and
# build revision, so a new pin or new build flags rebuild and nothing else does.
bin_dir() {
  local key
  key=$( (cat "$GO_MODULES/$1/go.mod" "$GO_MODULES/$1/go.sum"; build_revision "$1") | sha256sum | cut -c1-12)
  printf '%s/%s-%s\n' "$CACHE_DIR" "$1" "$key"
}

require_tool() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed: $2"
}

# Ports, all on loopback. Override any of them through the environment.
APISERVER_PORT=${APISERVER_PORT:-16443}
ETCD_PORT=${ETCD_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
CONTROLLER_MANAGER_PORT=${CONTROLLER_MANAGER_PORT:-20257}
SCHEDULER_PORT=${SCHEDULER_PORT:-20259}
KWOK_PORT=${KWOK_PORT:-20247}

# Node layout: NODE_COUNT nodes round-robin over ZONES.
NODE_COUNT=${NODE_COUNT:-6}
ZONES=${ZONES:-zone-a,zone-b,zone-c}
VOLUMES_PER_NODE=${VOLUMES_PER_NODE:-8}
# Pod start-up as KWOK plays it: Running after POD_START_MS, Ready POD_READY_MS later,
# each with up to the same again of random jitter.
POD_START_MS=${POD_START_MS:-200}
POD_READY_MS=${POD_READY_MS:-800}

COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler kwok"

component_bin() {
  case "$1" in
    etcd) printf '%s/etcd\n' "$(bin_dir etcd)" ;;
    kwok) printf '%s/kwok\n' "$(bin_dir kwok)" ;;
    helm) printf '%s/helm\n' "$(bin_dir helm)" ;;
    crane) printf '%s/crane\n' "$(bin_dir crane)" ;;
    *) printf '%s/%s\n' "$(bin_dir kubernetes)" "$1" ;;
  esac
}

pid_file() { printf '%s/pids/%s.pid\n' "$STATE_DIR" "$1"; }

# component_pid NAME: the pid of a component we started, if it is still alive.
component_pid() {
  local f pid
  f=$(pid_file "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

kctl() { "$(component_bin kubectl)" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: polls until COMMAND succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# show_log NAME: the last lines of a component's log, for a failed start.
show_log() {
  local f="$STATE_DIR/logs/$1.log"
  [ -f "$f" ] || return 0
  printf '[cluster] last lines of %s:\n' "$f" >&2
  tail -n 25 "$f" >&2
}

# launch NAME: runs a component from its saved command line in its own session (so that it
# outlives the calling shell), logging to logs/NAME.log.
launch() {
  local cmd
  cmd=$(cat "$STATE_DIR/pids/$1.cmd")
  (eval "exec setsid $cmd") >>"$STATE_DIR/logs/$1.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$1")"
}

# stop_component NAME: TERM, then KILL after 15 s; only the pid we recorded.
stop_component() {
  local name=$1 pid
  pid=$(component_pid "$name") || { rm -f "$(pid_file "$name")"; return 0; }
  kill "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    sleep 0.1
  done
  rm -f "$(pid_file "$name")"
  log "stopped $name (pid $pid)"
}

# --- real nodes: kubelets with a containerd each, beside the KWOK nodes ---------------------
# Every address below is on this machine: node and control-plane addresses on a bridge with
# no ports (the kernel here has no dummy devices), one bridge per real node for its pods, and
# the Service range routed to a second portless bridge, so that a packet kube-proxy did not
# translate is dropped here.
REAL_NODES=${REAL_NODES:-2}
REAL_DIR="$STATE_DIR/real"
HOST_DEV=pnhost0
SERVICE_DEV=pnsvc0
HOST_IP=10.213.0.1
NODE_NET=10.213.0.0/24
SERVICE_CIDR=10.96.0.0/16
CLUSTER_CIDR=10.214.0.0/16
KUBE_PROXY_HEALTHZ_PORT=${KUBE_PROXY_HEALTHZ_PORT:-21300}
KUBE_PROXY_METRICS_PORT=${KUBE_PROXY_METRICS_PORT:-21301}
# The nftables table of our own that keeps pod traffic on the machine.
GUARD_TABLE=perennial_guard
# What the guard writes in the kernel's log before each packet it drops.
GUARD_LOG_PREFIX="perennial-guard: "
# Image pulls go to a proxy address where nothing listens: no pull ever leaves the machine.
NO_PULL_PROXY=http://127.0.0.1:9

real_node_name() { printf 'real-node-%s\n' "$1"; }
real_node_ip() { printf '10.213.0.%s\n' "$((11 + $1))"; }
real_node_bridge() { printf 'pnbr%s\n' "$1"; }
real_node_pod_cidr() { printf '10.214.%s.0/24\n' "$1"; }
real_node_gateway() { printf '10.214.%s.1\n' "$1"; }
# A fixed, locally administered address: a bridge without one takes the lowest address of its
# ports, so a pod's veth coming or going would change the gateway's address under the others.
real_node_bridge_mac() { printf '02:70:6e:62:72:%02x\n' "$1"; }
real_node_kubelet_port() { printf '%s\n' "$((21250 + 10 * $1))"; }
real_node_healthz_port() { printf '%s\n' "$((21251 + 10 * $1))"; }
real_node_dir() { printf '%s/%s\n' "$REAL_DIR" "$(real_node_name "$1")"; }
real_node_socket() { printf '%s/containerd.sock\n' "$(real_node_dir "$1")"; }
# real_node_index NAME: the index of a real node, from its name.
real_node_index() {
  [[ $1 =~ ^real-node-([0-9]+)$ ]] || return 1
  printf '%s\n' "${BASH_REMATCH[1]}"
}

# all_components: the control plane, and each real node's containerd and kubelet and the
# host's kube-proxy when there are real nodes.
all_components() {
  local i name
  printf '%s\n' $COMPONENTS
  for ((i = 0; i < REAL_NODES; i++)); do
    name=$(real_node_name "$i")
    printf 'containerd-%s\nkubelet-%s\n' "$name" "$name"
  done
  [ "$REAL_NODES" -eq 0 ] || echo kube-proxy
}
