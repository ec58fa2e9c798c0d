// Package api is pierd's HTTP server: the network part of the Docker Engine API
// (/_ping, /version, /info, /networks...) and pier's own sandbox routes
// (/pier/v1/sandboxes), all in one route table, with and without the /v1.NN prefix.
//
// It owns the wire: Docker-style JSON bodies are decoded once here into the
// controller's typed specs, controller records are rendered into Docker's JSON shapes,
// and error kinds become HTTP status codes in exactly one function (statusOf). It must
// not hold state of its own or touch the kernel: everything goes through cnm.Controller.
package api
