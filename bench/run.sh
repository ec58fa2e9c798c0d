#!/usr/bin/env bash
# pier side by side with the Docker engine: `make bench-docker` (docs/benchmarks.md).
#
# Installs what the benchmark needs from Debian if it is missing (docker.io, dnsperf,
# iperf3, busybox-static, dnsmasq-base, iptables) without letting the packages start
# any service, builds pierd and pierbench from this tree, and runs pierbench as root.
# Arguments go to pierbench (e.g. `bench/run.sh -only dns,throughput -n-dns 5`).
# The report goes to stdout and bench/results/<date>.md. pierbench cleans up
# everything it started (daemons, namespaces, its work directory), also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "bench/run.sh: needs root (network namespaces, dockerd)" >&2
	exit 1
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v iptables >/dev/null || need+=(iptables)
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v nsenter >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)

tmp=$(mktemp -d /tmp/pierbench-build.XXXXXX)
policy_created=
cleanup() {
	rm -rf "$tmp"
	if [ -n "$policy_created" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

if [ ${#need[@]} -gt 0 ]; then
	echo "bench/run.sh: installing ${need[*]}" >&2
	# Package scripts must not start dockerd (or anything) in the machine's namespace.
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
# Both daemons, their children (containerd, shims, docker-proxy) and the load
# generators inherit this priority, so other work on a shared machine disturbs both
# systems less. BENCH_NICE=0 runs at normal priority.
nice -n "${BENCH_NICE:--10}" "$tmp/pierbench" -pierd "$tmp/pierd" -busybox /bin/busybox "$@"
