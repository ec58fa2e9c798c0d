// Package wg owns a pier host's WireGuard tunnel to the other pier hosts: one device,
// its key pair, its peers and the routes to them. It is the building block of
// encrypted overlays; it knows nothing about networks, VXLAN or etcd, and never
// chooses peers or keys by itself (the caller publishes public keys and acknowledges
// rotations).
//
// # Two namespaces
//
// The device lives in a dedicated tunnel namespace (made by the caller) that holds
// only lo and the device; its UDP socket lives in another namespace, the host's
// (Options.SocketNS). A peer's AllowedIPs are routed in the tunnel namespace through
// the device, and nothing else is routed there. So what enters the tunnel namespace
// can only leave it encrypted, with no firewall rule to forget, flush or race: if a
// peer is missing, WireGuard drops the packet; if the device is gone (Close, a crash
// of the process holding a userspace device, `ip link del`), the namespace has no
// route and a send fails with ENETUNREACH. Never cleartext: fail closed by
// construction. Open refuses a tunnel namespace that is the socket namespace.
//
// # Modes
//
// Kernel uses the kernel's WireGuard through wgctrl: the link is created in the
// socket namespace and then moved into the tunnel namespace, since a WireGuard device
// keeps its socket in the namespace it was created in (https://www.wireguard.com/netns/).
// Userspace embeds wireguard-go: the TUN device is created on a thread inside the
// tunnel namespace, the UDP bind opens its sockets on a thread inside the socket
// namespace, and the device is configured with IpcSet (no wireguard-go binary, no
// UAPI socket under /var/run/wireguard, whose one path would be shared by every
// namespace of the machine). Auto tries Kernel and falls back to Userspace when the
// kernel has no WireGuard (CONFIG_WIREGUARD), logging why; Mode reports the choice.
// Both modes render the same change (config.go): UAPI text or a wgtypes.Config.
//
// SetPeers replaces the peer set but applies only the difference: a peer whose
// configuration did not change is not touched and keeps its session.
//
// # Key rotation
//
// A device has one private key and a peer entry one public key, and two entries
// cannot share AllowedIPs, so a peer cannot know a host's old and new key at once.
// TestRotation measures the two orders with a UDP flow (a datagram every 5 ms) and a
// TCP stream from A to B, with the two steps 50 ms apart as an acknowledgement through
// etcd would make them (wireguard-go, 3 runs each; PIER_TEST_ROTATION_ORDERS=all
// runs every order, the suite only the baseline and pier's):
//
//   - key-first (A's SetPrivateKey, then B's SetPeers with A's new public key), B's
//     entry for A with a persistent keepalive: 0 datagrams lost, also over 10
//     rotations in a row. A's first handshake under its new key is refused by B, A
//     holds its packets, and B's SetPeers sends a handshake at once because turning a
//     keepalive on sends one. The hold is 128 packets per peer (wireguard-go and the
//     kernel alike): a UDP flow sending more than that during the acknowledgement
//     delay loses the excess.
//   - key-first without a keepalive: ~870 lost, a 5 s hole: B has no reason to
//     initiate, and A retries only after REKEY_TIMEOUT (5 s).
//   - peers-first (B's SetPeers, then A's SetPrivateKey): ~11 lost, the 50 ms between
//     the steps: B dropped the entry holding A's old session, while A still sends on it.
//
// TCP lost nothing and was never reset in any order. So pier's make-before-break is:
// the rotating host switches its key first, publishes the new public key, and every
// peer replaces its entry with a non-zero Keepalive; a rotation is complete when
// every peer has acknowledged. One more trap, seen at set-up and in back-to-back
// rotations: when both ends send a handshake initiation within one round trip, each
// consumes the other's, both responses are refused, and the tunnel is down for 5 s
// (REKEY_TIMEOUT). Let only one side have a reason to initiate at a time: SetPrivateKey
// sends this side's handshake under the new key at once (a kick: a peer's keepalive
// turned off and on again), so it is refused before any peer learns the key and is
// not retried for 5 s; the peers then initiate (stack/tunnel.go orders the rest).
//
// SetPeers sets peers before it removes others, so a peer whose key changed gets its
// old entry's AllowedIPs in one move (no packet finds no entry meanwhile), and keeps
// the old entry, without AllowedIPs, for retireAfter: packets already queued on it are
// still sent.
//
// # Locking
//
// Tunnel.mu guards the key, the peer set and the routes; it is held across the kernel
// calls of one change so that changes apply in order. There is no other lock order.
package wg
