// Package cli is the pier command line: the cobra command tree behind cmd/pier.
//
// It owns flag parsing (Docker's flags for `pier network ...`), turning flags into
// typed API requests for package client, rendering tables, Go templates and JSON the
// way docker does, and running processes inside sandboxes (`pier exec`, `pier run`):
// pier re-executes itself as a hidden `__enter` child in new mount and UTS namespaces,
// which bind-mounts the sandbox's hosts, resolv.conf and hostname files over /etc,
// joins the sandbox network namespace and execs the command.
//
// It must not talk to pierd other than through package client, and must not change
// the caller's own namespaces, mounts or hostname: everything namespaced happens in
// the child.
package cli
