package cli

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// forwardedSignals are passed on to the command pier runs.
var forwardedSignals = []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2}

// runForwardingSignals starts cmd, forwards signals to it until it exits, and returns
// its exit status (128+N when killed by signal N). The error is for a failure to
// start or wait, not for a non-zero status.
func runForwardingSignals(cmd *exec.Cmd) (int, error) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }() // ends when the command exits
	fromTerminal := terminalForeground()
	for {
		select {
		case sig := <-sigs:
			if !(fromTerminal && isTerminalSignal(sig)) {
				_ = cmd.Process.Signal(sig) // it may just have exited
			}
		case err := <-done:
			return exitCode(cmd.ProcessState, err)
		}
	}
}

// terminalForeground reports whether pier is the foreground job of its terminal: then
// the terminal's Ctrl-C and Ctrl-\ reach the command directly and are not forwarded
// (the command would get them twice).
func terminalForeground() bool {
	for _, f := range []*os.File{os.Stdin, os.Stdout, os.Stderr} {
		if pgrp, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPGRP); err == nil {
			return pgrp == unix.Getpgrp()
		}
	}
	return false
}

func isTerminalSignal(sig os.Signal) bool { return sig == unix.SIGINT || sig == unix.SIGQUIT }

// exitCode turns a finished process's state into a shell-style exit status. Once
// the process has run, a wait error (such as a failed copy of its output) does not
// hide its status.
func exitCode(ps *os.ProcessState, waitErr error) (int, error) {
	if ps == nil {
		return 0, waitErr
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ps.ExitCode(), nil
}
