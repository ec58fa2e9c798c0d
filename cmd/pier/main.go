// Command pier is the command line of pierd: it manages networks and sandboxes and
// runs processes inside sandboxes. All logic lives in package cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/piernet/pier/cli"
)

func main() {
	// Signals cancel API calls; `pier exec` and `pier run` also forward them to the
	// command and clean up before exiting.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], cli.Options{})
	stop()
	os.Exit(code)
}
