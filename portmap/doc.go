// Package portmap owns host-port publishing decisions: parsing Docker's -p
// syntax ([Spec], [ParseSpec]), reserving host ports ([Allocator]) and the
// loopback proxy ([Proxy]) that serves 127.0.0.1 and ::1, which the kernel
// cannot DNAT to a container.
//
// It never programs the firewall: the caller turns the [Binding]s that
// Allocate returns into firewall.PortBinding values and hands them to
// firewall.SetPorts, where published ports are elements of nftables maps. No
// process is started per port: the only sockets portmap keeps open are the
// proxy's loopback listeners, all served by one goroutine (an epoll loop).
//
// Kernel access goes through a namespace handle ([Runner], satisfied by
// *netns.Namespace): probing whether a host port is free binds a socket in
// the host namespace and closes it at once; the proxy creates its sockets
// there. Nothing here touches the calling thread's namespace.
//
// Lock order: Allocator.mu and Proxy.mu are independent; the proxy's
// per-listener locks are taken after Proxy.mu.
package portmap
