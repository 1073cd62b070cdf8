#!/usr/bin/env bash
# Starts a containerd configured for a Kelp node, for benchmarks and for trying Linux
# containers on a machine without one (tests start their own, tests/common/containerd.rs):
#
#   scripts/containerd-node.sh DIR
#
# installs Debian's containerd, runc, containernetworking-plugins and busybox-static if
# missing, builds the pause and busybox images (scripts/linux-images.py), starts
# containerd in the background with root, state and socket under DIR (pid in
# DIR/containerd.pid, log in DIR/containerd.log) and imports the images. Then:
#
#   kelp up --container-runtime-endpoint unix://DIR/containerd.sock --cni-conf-dir DIR/net.d
#
# The config is what a Kelp node needs from an operator's containerd: the CRI plugin's
# sandbox_image (here the local pause image), cni.conf_dir = the agent's --cni-conf-dir,
# and restrict_oom_score_adj (only where containerd may not lower OOM scores, as in
# unprivileged containers).
set -euo pipefail
dir=$(realpath -m "${1:?usage: scripts/containerd-node.sh DIR}")
here=$(cd "$(dirname "$0")" && pwd)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  $SUDO systemctl stop containerd >/dev/null 2>&1 || true
fi
mkdir -p "$dir/net.d"
python3 "$here/linux-images.py" "$dir/images" >/dev/null
cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "kelp.local/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
TOML
containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
echo $! >"$dir/containerd.pid"
for _ in $(seq 1 300); do
  ctr --address "$dir/containerd.sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
for img in pause busybox; do
  ctr --address "$dir/containerd.sock" --namespace k8s.io images import "$dir/images/$img.tar" >/dev/null
done
echo "containerd (pid $(cat "$dir/containerd.pid")) at unix://$dir/containerd.sock, CNI configs in $dir/net.d"
