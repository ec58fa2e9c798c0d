#!/usr/bin/env bash
# pier's cluster side by side with Docker swarm and the kernel's raw VXLAN:
# `make bench-cluster` (docs/benchmarks.md).
#
# Installs what it needs from Debian if missing (docker.io, iperf3, busybox-static,
# etcd-server, iptables) without letting the packages start any service, builds pierd
# and pierbench from this tree, and runs `pierbench cluster` as root. Arguments go to
# it (e.g. `bench/cluster.sh -only throughput -n-tput 3`). The report goes to stdout
# and bench/results/<date>-cluster.md. Everything it starts (the pier lab, three
# dockerds, namespaces, its work directory) is removed at the end, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "bench/cluster.sh: needs root (network namespaces, dockerd)" >&2
	exit 1
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker >/dev/null || need+=(docker.io)
command -v iptables >/dev/null || need+=(iptables)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v etcd >/dev/null || need+=(etcd-server)
command -v nsenter >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
command -v bridge >/dev/null || need+=(iproute2)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)

tmp=$(mktemp -d /tmp/pierbench-cluster-build.XXXXXX)
policy_created=
cleanup() {
	rm -rf "$tmp"
	if [ -n "$policy_created" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

if [ ${#need[@]} -gt 0 ]; then
	echo "bench/cluster.sh: installing ${need[*]}" >&2
	# Package scripts must not start dockerd or etcd in the machine's namespace.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		policy_created=1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
	if [ -n "$policy_created" ]; then rm -f /usr/sbin/policy-rc.d; policy_created=; fi
fi

GO=${GO:-go}
"$GO" build -o "$tmp/" ./cmd/pierd ./bench/cmd/pierbench
# Every daemon and load generator inherits this priority (BENCH_NICE=0: normal).
nice -n "${BENCH_NICE:--10}" "$tmp/pierbench" cluster -pierd "$tmp/pierd" -busybox /bin/busybox "$@"
