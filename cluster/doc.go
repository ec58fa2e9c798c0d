// Package cluster is pier's cluster control plane over etcd: this node's record and
// lease, the key layout, watch-fed caches with revision resync, and the transactions
// that decide everything cluster-wide (network names, "network has endpoints",
// endpoint names, address pools and addresses, VNIs). It does no kernel work, keeps
// no local records (bbolt stays in store/), and never decides a cluster-wide fact
// from its caches: the caches serve reads and events only.
//
// # Seam
//
// All store access goes through KV (Get, List at a revision, Txn with compares, Watch
// from a revision, Grant/KeepAlive/Revoke). EtcdKV implements it over clientv3; Fake
// in memory with revisions, compaction and leases. One conformance table runs against
// both (including etcd's range-compare semantics: a compare over a prefix holds when
// it holds for every key under it, and an empty prefix compares as an absent key).
// clustertest starts embedded etcd members for tests.
//
// # Key layout (under /pier/v1/)
//
//	nodes/<id>                    NodeRecord, no lease: stays after the node dies (Left on Close)
//	alive/<id>                    the node's address, on its lease: the only leased key
//	names/nodes/<name>            node ID holding the name
//	networks/<id>                 NetworkRecord
//	names/networks/<name>         network ID (name uniqueness)
//	endpoints/<netID>/<epID>      EndpointRecord (not on a lease: etcd-io/etcd#15993)
//	names/endpoints/<netID>/<n>   endpoint ID (name uniqueness per network)
//	ipam/pools                    the list of global pools, one key changed by CAS
//	ipam/addrs/<pool>/<addr>      address claim (owner: "endpoint" or "gateway")
//	vni/<n>                       network ID
//	services/<id>                 ServiceRecord (global services)
//	names/services/<name>         service ID (name uniqueness)
//	acks/<epID>/<nodeID>          the node stopped choosing draining task endpoint epID
//
// Node state is derived, not written on failure: ready = alive/<id> exists; left =
// the record says Left; down = the record exists without an alive key. So every node,
// also one started later, sees down nodes, and nobody races to write down markers.
// Endpoints of a node that is not ready are withdrawn from the view and events
// (EndpointRemoved) and come back when it is ready again and still has them. Records
// of a dead node stay until the node itself returns and reconciles (the controller
// withdraws what it no longer has) or a new node takes its name over.
//
// # Registration
//
// Start reads names/nodes/<name>: held by another node whose alive key exists →
// Conflict, nothing written; held by a dead node → taken over (its record is deleted
// in the same transaction, guarded on it staying dead); held by this ID → re-used. The
// lease is kept alive every TTL/3; a lost lease (e.g. after a partition) registers
// again. Close writes the record Left, deletes the alive key and revokes the lease.
//
// # Watch and resync
//
// Start lists everything at revision R and watches from R+1 (WithRequireLeader).
// After each response the next start is the last event's revision + 1 (not the
// header revision: etcd sends a catching-up watcher's header as the current
// revision before all events are out). A dropped watch resumes from there with
// backoff; a compaction re-lists, and the new view is diffed against the old one
// (mark and sweep), so removals that happened in the compacted gap are still
// reported. Every change is a diff of the view before and after, so subscribers
// (Subscribe: snapshot + unbounded ordered channel) never see an event twice or
// miss one. The diff is O(cluster size) per watch response: fine to thousands of
// endpoints; an index per node/network is the next step beyond that.
//
// # Failure behaviour
//
// Every method bounds its store round trips (3 s) and returns errdefs Unavailable
// ("cluster store: ...") when etcd does not answer; the caches keep their last
// content meanwhile and converge when etcd is back. Writes do not wait for their own
// event: the controller records its own objects itself.
//
// Lock order: Cluster.mu only (subscriber and fake locks are leaves); no store I/O
// under it.
package cluster
