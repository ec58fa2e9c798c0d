// Package lb load-balances connections to service virtual IPs inside one network
// namespace with nftables, the way kube-proxy's nftables mode does (this kernel has no
// IPVS). It owns exactly one object in that namespace: the table "ip pier_lb".
//
// The ruleset, for any number of services:
//
//	chain nat_out    (nat, output, -100): ip daddr . meta l4proto . th dport vmap @dispatch_ports
//	                                      ip daddr vmap @dispatch_all
//	chain filter_out (filter, output, 0):  ip daddr @vips meta l4proto tcp reject with tcp reset
//	                                      ip daddr @vips reject
//	chain svc_<ID>: dnat ip to numgen random mod N map { 0 : backend0, … }
//
// A packet costs two hash lookups, whatever the number of services. A service listed
// with ports is dispatched only for those (VIP . proto . port); one without ports is
// dispatched for every protocol and port (Docker's behaviour). The DNAT keeps the
// port. Whatever is still addressed to a VIP after the nat hook — a service with no
// backend, a port the service does not list — is rejected at once by filter_out (TCP
// reset, ICMP port unreachable), never left to time out.
//
// Sticky services (Service.Sticky > 0) keep a dynamic map "sticky_<ID>" of client
// address → backend with that timeout, refreshed by every new connection; a client
// with an entry goes to its backend, the others are chosen at random and recorded.
//
// Changes are one netlink batch each, touching only the changed service: its dispatch
// elements and its chain (flushed and rewritten: O(its backends)). Removing a backend
// deletes the sticky entries that point at it and, after the batch, the UDP conntrack
// entries of flows from this namespace to it through the VIP (they would otherwise
// keep going to a removed backend while the client keeps its port, kubernetes#125467),
// and those of TCP flows it never answered (SYN_SENT: a dead backend's; the entry
// keeps its DNAT two minutes, so a retransmitted SYN, or a new connection that drew
// the same source port, went to the dead backend again: one in ~4 runs of
// lab/TestLabServiceSurvivesTaskHostDeath). Answered TCP flows are left alone:
// removing a backend gracefully is the caller's business (withdraw it, let its
// connections finish, then remove it).
//
// A batch the kernel rejects leaves the table in an unknown state: the Table drops its
// connection and the next change rewrites the whole table (delete and re-create in
// one batch). The desired state is unchanged by a failed call.
//
// IPv4 only: virtual IPs are IPv4, as in Docker.
package lb
