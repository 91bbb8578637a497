# Pod networking of the test node (sourced by scripts/node).
#
# Everything stays inside this machine:
# - Pods sit on a private Linux bridge (NODE_BRIDGE, NODE_POD_CIDR) wired by the
#   standard CNI `bridge` + `host-local` plugins, with no IP masquerade. The
#   kernel's ip_forward stays as it is (0 on the test machines), so nothing a
#   pod sends can be routed out of another interface.
# - The bridge's own address (NODE_IP) is the node's InternalIP: the kernel has
#   no dummy interfaces here (CONFIG_DUMMY unset) and kubelet refuses a loopback
#   node IP.
# - The API server listens on 127.0.0.1 only. Pods reach it as the `kubernetes`
#   Service (10.0.0.1:443) through one DNAT rule to 127.0.0.1:<port>, which the
#   kernel allows for packets arriving on the bridge only with route_localnet=1
#   on it. The same trick kube-proxy uses for localhost NodePorts; a companion
#   rule drops anything else from the bridge to 127.0.0.0/8 (as kube-proxy does).
# - kubelet's API listens on 127.0.0.1 too; the API server dials it at
#   NODE_IP:<port> (for `kubectl logs`), which a DNAT rule in OUTPUT sends to
#   127.0.0.1.
# All rules live in chains of our own (NODE_CHAIN_*), so `down` removes exactly them.

NODE_BRIDGE=fanout0
NODE_POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
NODE_CNI_NETWORK=fanout-node
KUBERNETES_SERVICE_IP=10.0.0.1
NODE_CHAIN_NAT_PRE=FANOUT-NODE-PREROUTING
NODE_CHAIN_NAT_OUT=FANOUT-NODE-OUTPUT
NODE_CHAIN_FILTER_IN=FANOUT-NODE-INPUT

# net_up STATE_DIR APISERVER_PORT KUBELET_PORT
net_up() {
  local state=$1 apiserver_port=$2 kubelet_port=$3
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr replace "${NODE_IP}/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  sysctl -qw "net.ipv4.conf.${NODE_BRIDGE}.route_localnet=1"

  net_rules_down
  iptables -w -t nat -N "$NODE_CHAIN_NAT_PRE"
  iptables -w -t nat -A "$NODE_CHAIN_NAT_PRE" -i "$NODE_BRIDGE" -p tcp -d "$KUBERNETES_SERVICE_IP" --dport 443 \
    -m comment --comment "fanout node: kubernetes Service -> apiserver on loopback" \
    -j DNAT --to-destination "127.0.0.1:${apiserver_port}"
  iptables -w -t nat -I PREROUTING -j "$NODE_CHAIN_NAT_PRE"
  iptables -w -t nat -N "$NODE_CHAIN_NAT_OUT"
  iptables -w -t nat -A "$NODE_CHAIN_NAT_OUT" -p tcp -d "$NODE_IP" --dport "$kubelet_port" \
    -m comment --comment "fanout node: node IP kubelet port -> kubelet on loopback" \
    -j DNAT --to-destination "127.0.0.1:${kubelet_port}"
  iptables -w -t nat -I OUTPUT -j "$NODE_CHAIN_NAT_OUT"
  iptables -w -t filter -N "$NODE_CHAIN_FILTER_IN"
  iptables -w -t filter -A "$NODE_CHAIN_FILTER_IN" -i "$NODE_BRIDGE" -d 127.0.0.0/8 \
    -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT \
    -m comment --comment "fanout node: only the DNATed apiserver is reachable on loopback from pods" -j DROP
  iptables -w -t filter -I INPUT -j "$NODE_CHAIN_FILTER_IN"

  mkdir -p "${state}/cni/net.d" "${state}/cni/ipam"
  cat >"${state}/cni/net.d/10-${NODE_CNI_NETWORK}.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "${NODE_CNI_NETWORK}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${state}/cni/ipam",
        "ranges": [[{"subnet": "${NODE_POD_CIDR}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

# Removes our chains and the jumps to them (each step tolerates absence).
net_rules_down() {
  local table chain parent
  for spec in "nat ${NODE_CHAIN_NAT_PRE} PREROUTING" "nat ${NODE_CHAIN_NAT_OUT} OUTPUT" \
    "filter ${NODE_CHAIN_FILTER_IN} INPUT"; do
    read -r table chain parent <<<"$spec"
    while iptables -w -t "$table" -D "$parent" -j "$chain" 2>/dev/null; do :; done
    iptables -w -t "$table" -F "$chain" 2>/dev/null || true
    iptables -w -t "$table" -X "$chain" 2>/dev/null || true
  done
}

# Removes the rules, the bridge (and with it any veth still attached) and the
# CNI results libcni caches under /var/lib/cni for our network.
net_down() {
  net_rules_down
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  rm -f /var/lib/cni/results/"${NODE_CNI_NETWORK}"-* 2>/dev/null || true
}
