// Package dns is pier's embedded DNS server: the resolver every sandbox on a
// user-defined network finds at 127.0.0.11:53 (UDP and TCP).
//
// It owns name resolution between sandboxes and forwarding to upstreams. It
// must not know about networks, endpoints or drivers beyond the [Record]s and
// [SandboxConfig]s the controller feeds it, and must never bind anything in
// the host's namespace: each sandbox's listeners and every upstream socket are
// created on a thread switched into the sandbox's own namespace, so an
// internal network cannot leak a query and port 53 on the host stays free.
//
// Names: a query from sandbox S is answered locally when the name (case-
// insensitive, trailing dot optional) is a name of a Record on a network S
// has a Record on: the sandbox name, an alias, the short ID, also as
// "name.network", and with one of S's search domains removed. A and AAAA
// return every matching address in rotating order; a local name without
// addresses of the asked family, or asked for another type, gets NOERROR with
// no answers. PTR queries for addresses on S's networks return
// "name.network" (Docker's behaviour). Local answers have TTL 600.
//
// Everything else is forwarded, unless S is internal (NXDOMAIN) or has no
// upstreams (SERVFAIL). Upstreams are asked in health order with hedging
// (the next one after Options.HedgeDelay, or at once when one fails); the
// first NOERROR, NXDOMAIN or truncated reply wins; SERVFAIL when none
// answers within Options.UpstreamTimeout. Replies are cached (LRU, TTLs
// honoured, negative answers per RFC 2308), identical concurrent questions
// share one upstream query, and at most Options.MaxInFlight queries per
// sandbox are forwarded at a time (beyond: SERVFAIL at once).
//
// The local-answer and cache-hit paths run on the socket's reader goroutines
// with reused buffers and allocate nothing; see docs/dns.md for the design
// and measurements.
//
// Goroutines: AddSandbox starts a sandbox's UDP reader(s) and TCP accept loop;
// they start one goroutine per TCP connection (at most 64) and per forwarded
// query (at most MaxInFlight), plus one per upstream asked. RemoveSandbox and
// Close stop them all and wait. Start starts nothing but a watcher of its ctx.
//
// Locking: Server.mu guards the sandbox set; registry.mu guards the records
// and serialises view rebuilds; flights.mu, each cache shard's mu and each
// upstream's mu guard their own fields. No lock is held while another is
// taken, and none is held during socket I/O. Local answers read the current
// view through an atomic pointer without locking; only the first query after a
// change takes registry.mu, to rebuild the view.
package dns
