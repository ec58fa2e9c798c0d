// Test plugins for pier's remote network driver and remote IPAM, written against
// Docker's plugin SDK. A separate module, so pier's go.mod does not carry the SDK's
// dependencies; the tests build the binaries with `go build`.
module github.com/piernet/pier/driver/remote/testdata/plugins

go 1.26.8

require (
	github.com/docker/go-plugins-helpers v0.0.0-20240701071450-45e2431495c8
	github.com/vishvananda/netlink v1.3.1
)

require (
	github.com/Microsoft/go-winio v0.6.4 // indirect
	github.com/coreos/go-systemd v0.0.0-20191104093116-d3cd4ed1dbcf // indirect
	github.com/docker/go-connections v0.8.2 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
