// Package ingress is the kernel data plane of pier's ingress routing mesh: every
// host accepts connections on a service's published ports and forwards them to a
// backend task on any host over the cluster-wide L2 "ingress network" (an overlay),
// keeping the client's address. It owns two nftables tables and, in task namespaces,
// a few routing rules and tables; it never reads or changes another table, never
// flushes a ruleset and runs no nft or iptables binary. It knows nothing about the
// cluster: the controller decides which backends each host uses (local ones first)
// and which routers a task has.
//
// # Host side: Publisher, table "ip pier_ingress"
//
// Every host is a router on the ingress network (an address and a MAC on it). The
// rules are fixed, whatever the number of services; services are map elements:
//
//	map targets  { proto . published port : target port }
//	map services { proto . published port : service number }  (bookkeeping)
//	set snat     { proto . published port }          (the ports of services with SNAT)
//	map slots    { proto . published port . slot : backend address }
//	chain nat_pre (nat, prerouting, dstnat), two rules, the first for @snat ports:
//	    fib daddr type local [meta l4proto . th dport @snat]
//	    meta l4proto . th dport map @targets → port
//	    meta l4proto . th dport . numgen random mod 64 map @slots → address
//	    ct mark set ct mark | 0x10000000 [| 0x20000000]
//	    dnat ip to address : port
//	chain nat_post   (nat, postrouting, srcnat): ct mark & 0x20000000 != 0 masquerade
//	chain filter_in  (filter, input, 0):    iifname != "lo" meta l4proto . th dport @targets reject
//	chain filter_fwd (filter, forward, 0):  ct status dnat ct mark & 0x10000000 != 0 accept
//
// A new connection to any local address of the host on a published protocol and
// port costs three hash lookups and is DNATed to slot s of that port's 64-slot table,
// with the port rewritten to the target. The slot tables are keyed by published port,
// not by a service number looked up first: nft (1.0.x) aborts on `nft list ruleset`
// when a concatenation starts with a map's result, and an admin's listing must work.
// The slot assignment is package lb's: a backend change rewrites only the ~64/N slot
// elements per published port that change hands. Every
// change is one netlink batch of O(changed) elements, never a rule: there are no
// per-service chains, because a chain reached from a verdict map makes the kernel
// validate the table on every rule and goto added (at 1,000 services a rewrite took
// 5 s that way; now 0.3 s). What still reaches the host itself on a published port
// (a service with no backend) is refused at once: TCP reset, ICMP port unreachable.
// Loopback is left alone: the kernel does not DNAT it, the caller's proxy serves it.
//
// Why the client's address survives: the connection is only DNATed, not
// masqueraded, so the task sees the client's real address and port; the receiving
// host's conntrack entry undoes the DNAT on the replies, which therefore must come
// back through that host. The task side (Return) sees to that. With Service.SNAT the
// connection is masqueraded behind the host's ingress address instead (Docker's
// behaviour): the task sees the host, and replies need no Return.
//
// The Publisher only owns its table. The forward chain accepts the mesh's flows in
// it, but another table's forward drop policy (Docker's, firewalld's) must allow
// them too; the host must forward IPv4 (net.ipv4.ip_forward=1), and the ingress
// network must carry packets whose source is a client address (no anti-spoofing on
// the overlay, as VXLAN between hosts has none). When backends are removed, the UDP
// conntrack entries of DNATed flows to them are deleted (TCP flows are the caller's
// to drain). Intact compares the kernel's chains, rule counts and per-port maps with
// the desired state in a few milliseconds (after `nft flush ruleset` it is false;
// the slot map is not dumped); Rewrite rewrites the table atomically.
//
// # Task side: Return, table "ip pier_ingress_rt"
//
// Without SNAT the task's reply to the client would follow the task's default route
// (another interface, another host) and never reach the conntrack entry that undoes
// the DNAT. In each task namespace, for the routers (hosts) of the mesh:
//
//	chain pre (filter, prerouting, mangle): iifname IFACE ct direction original jump routers_in
//	                                        iifname IFACE ct mark & 0x0fff0000 != 0 meta l4proto udp
//	                                            update @udp_src { ip saddr . udp sport . udp dport timeout 120s : ip daddr }
//	chain routers_in:  ether saddr <router MAC> ct mark set ct mark & ~0x0fff0000 | k<<16   (one per router)
//	chain udp_source (route, output, raw):  meta l4proto udp ip saddr set ip daddr . udp dport . udp sport map @udp_src
//	chain out (route, output, mangle):      ct mark & 0x0fff0000 != 0 jump routers_out
//	chain routers_out: ct mark & 0x0fff0000 == k<<16 meta mark set meta mark & ~0x0fff0000 | k<<16
//	ip rule priority 9000: fwmark k<<16/0x0fff0000 lookup 40000+k
//	table 40000+k: default via <router k's address> dev IFACE
//
// A connection arriving from router k's MAC is marked k in conntrack; its replies
// get packet mark k in the output route chain, which makes the kernel route them
// again, by the rule, through router k. Router numbers k are 1..4095 (kept while a
// router stays, the lowest free one for a new router); marks use only the bits of
// 0x0fff0000, so other users of the packet and connection marks are unaffected; the
// tables are 40001..44095 and the rules sit at priority 9000 (before main, 32766).
// That is O(routers) rules per task: two nft rules, one ip rule and one route per
// router, rewritten (the nft rules, in one batch) only when the routers change. A
// packet from the ingress side walks routers_in (linear in the routers: fine for the
// tens of hosts of a cluster; a map would have to overwrite the whole ct mark, as
// this kernel interface cannot OR two registers). Every packet in the original
// direction re-marks its connection, not only the first: a UDP client that reuses
// its address and port through another router within the conntrack timeout (one
// flow for the task) gets its answers through the router it used last. The ct
// rules make conntrack active in the task namespace. Intact and Rewrite heal the
// table after `nft flush ruleset` in the task, as for the Publisher.
//
// rp_filter: the client's SYN arrives on IFACE while the task's route to the client
// goes elsewhere, so strict reverse-path filtering would drop it: NewReturn sets
// IFACE's rp_filter to loose (2) and Close restores it (the kernel applies the larger
// of conf.all and conf.IFACE, so 2 is loose whatever conf.all says). A real network
// must allow the same: nothing between the router and the task may filter packets
// by their client source address.
//
// UDP servers bound to the wildcard address: a reply sent without IP_PKTINFO (most
// servers) gets its source address from the route the kernel picks before any mark,
// the task's default route, so it would leave with the wrong address and match no
// connection. The udp_src map remembers, per client address and port and server
// port, the address the client's last datagram was sent to (for 120 s, refreshed by
// each datagram); the udp_source chain, before conntrack, writes it back into the
// reply's source (checksums updated), so conntrack finds the connection and its
// mark. TCP needs nothing of the kind: an accepted socket has the address the SYN
// was sent to.
//
// Locking: Publisher.mu and Return.mu guard their desired state and are held across
// kernel batches, so batches reach the kernel in the order the state changed. They
// are independent of each other. IPv4 only, as the ingress network.
package ingress
