// Package member runs this node's part of pier's etcd: an embedded etcd member (on
// --cluster-init, and on --cluster-join while the cluster has fewer than three
// members, k3s-style), a client-only configuration (the fourth node on), or the client
// settings of an external etcd (--cluster-store). It owns the cluster CA, the node
// certificates, join tokens and the join service. It does not know pier's records:
// package cluster builds those on the etcd client this package configures
// (Member.ClientConfig).
//
// # Trust model
//
// Init creates a cluster CA (ECDSA P-256). Embedded members serve etcd clients and
// peers only over mutual TLS with certificates of that CA: a client without one can
// neither read nor write. A join token, PIER1-<fingerprint>-<secret>, carries the
// base32 SHA-256 fingerprint of the CA certificate and a random 256-bit secret:
//
//   - the joiner trusts the join service only if the server's chain leads to the CA
//     with that fingerprint (not the system roots), so a token cannot be replayed
//     against a server of another cluster, nor a joiner lured to one;
//   - the join service accepts a joiner only if it presents the secret (compared in
//     constant time); anything else is refused before a certificate is signed, a member
//     added or a file written on either side.
//
// An accepted joiner sends a certificate request (its key never leaves it) and gets a
// certificate: client-only, or server+client (naming its advertise address and
// 127.0.0.1) if it is to become a member. A joiner that becomes a member also gets the
// CA key and the token secret over that authenticated channel, so that every member
// can serve joins and the cluster survives the loss of the first node. The token is
// therefore as powerful as the CA key (as k3s' server token is): whoever holds it can
// join as a member. Client-only nodes hold no CA key and no token. There is no token
// rotation or certificate revocation yet; certificates are valid for ten years.
//
// New members are added as etcd learners and promoted once in sync, so a joiner that
// dies half-way never costs the cluster its quorum (a failed join also removes the
// learner again). etcd refuses membership changes for five seconds after a promotion
// (its strict reconfiguration check): the next joiner waits meanwhile.
//
// # Files under Options.DataDir (0700)
//
//	ca.crt      the cluster CA certificate (every node)
//	ca.key      the CA key, 0600 (members only)
//	node.crt    this node's certificate
//	node.key    its key, 0600
//	token       the join token, 0600 (members only; ReadToken, `pier cluster token`)
//	state.json  name, role, advertise address, ports, the cluster's endpoints; written
//	            last: a data dir with it is resumed by Init or Join without a token
//	etcd/       the embedded member's data (members only)
//
// # Ports (on the advertise address; Options can change them)
//
//	2379  etcd clients (mutual TLS)
//	2380  etcd peers (mutual TLS)
//	2377  the join service (HTTPS with the member certificate; POST /pier/v1/cluster/join),
//	      Docker swarm's cluster management port
//
// etcd's own logs go to the injected slog.Logger with component=etcd, warnings and
// errors only, without the noise of a normal shutdown.
//
// Lock order: joinServer.mu only (one join decision at a time per member). Goroutines:
// etcd's, and the join service's Serve loop, all stopped by Member.Close.
package member
