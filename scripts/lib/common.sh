# Shared by every script under scripts/: where the repository is, which tool
# versions are pinned, and where their binaries are cached.
#
# The cache lives outside the checkout so that a fresh clone reuses binaries
# that take many minutes to build. Its directory name is derived from the
# pinned control-plane versions (Kubernetes, etcd, Helm), so bumping one of
# them builds into a new directory and never mixes binaries of two versions.
# Linters that nothing else depends on (kube-score) are not in the key: each
# binary's recipe file (scripts/tools-build) carries its version, so bumping
# one rebuilds that binary alone, in place.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../../tools/versions.env
source "${REPO_ROOT}/tools/versions.env"

FANOUT_CACHE=${FANOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fanout}
TOOLS_KEY="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
TOOLS_BIN="${FANOUT_CACHE}/tools/${TOOLS_KEY}/bin"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
