// Package firewall programs pier's packet filter with nftables over netlink.
//
// It owns exactly one object in the kernel: the table "inet pier" (its sets,
// maps, chains and rules). It never reads, changes or deletes any other
// table, never flushes the ruleset, and never runs the nft or iptables
// binaries. Its base chains use the standard priorities (dstnat -100,
// filter 0, srcnat 100), so pier coexists with Docker, firewalld and
// kube-proxy, whose tables are evaluated beside ours.
//
// The ruleset is fixed: a handful of rules that dispatch through named sets
// keyed by bridge name, and through maps of published ports (one element
// per port: "daddr . proto . dport" for a host address, "proto . dport" for
// 0.0.0.0 and ::). The desired state (one [Bridge] per bridge network, the
// [PortBinding]s of each owner) lives in memory; every change is one
// netlink batch that adds or deletes elements, so its cost does not grow
// with the number of networks or published ports. The full table is
// written only by [Firewall.Reconcile], on first use, when an incremental
// batch is rejected, and by the watcher: then the table is deleted and
// rewritten in one atomic batch.
//
// Self-healing: [Firewall.Start] listens to the kernel's nftables
// notifications and rewrites the table within milliseconds when another
// process changes it (`nft flush ruleset`, a firewalld reload). Conntrack
// state is kept, so established connections survive. See watch.go.
//
// Loopback: the kernel cannot DNAT connections to ::1 (and to 127.0.0.1
// only with route_localnet, which pier does not set), so loopback host
// addresses are left to portmap's in-process proxy; the output chain skips
// them.
//
// Why there is no "table bridge pier": isolating the ports of an ICC-off
// bridge at layer 2 needs "meta ibrname" (NFT_META_BRI_IIFNAME), which lives
// in the optional nft_meta_bridge module (CONFIG_NFT_BRIDGE_META); the kernel
// pier targets lacks it and rejects the rule with EOPNOTSUPP. ICC is enforced
// in the inet table instead, the way Docker does it: bridged IP traffic
// crosses the inet forward hook with iifname == oifname == the bridge when
// br_netfilter is active (net.bridge.bridge-nf-call-ip{,6}tables=1), and only
// ICC-on bridges are in the "intra" set, so ICC-off traffic falls through to
// the isolation rule and is dropped. The bridge driver can also set the
// kernel's bridge-port "isolated" flag, which needs no netfilter at all.
//
// Locking: Firewall.mu guards the desired state and is held across each
// kernel batch on purpose: batches must reach the kernel in the order the
// desired state changed. Firewall.portsMu guards only the set of the
// Firewall's own netlink port IDs and is never held with mu. The watcher's
// goroutines take mu like any caller; Close stops them before it takes mu.
package firewall
