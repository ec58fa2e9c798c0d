// Package serve runs a test plugin on a unix socket, with faults injected on demand.
package serve

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Mux is the part of the SDK's handler this package needs.
type Mux interface {
	HandleFunc(path string, fn func(http.ResponseWriter, *http.Request))
	Serve(l net.Listener) error
}

// Flags are the common command line of the test plugins.
type Flags struct {
	Sock  string
	Fault string // Method=sleep|exit|garbage, comma-separated
	Sleep time.Duration
}

// Parse reads the flags.
func Parse() *Flags {
	f := &Flags{}
	flag.StringVar(&f.Sock, "sock", "", "unix socket to listen on")
	flag.StringVar(&f.Fault, "fault", "", "Subsystem.Method=sleep|exit|garbage[,...]")
	flag.DurationVar(&f.Sleep, "sleep", time.Minute, "how long a sleep fault blocks")
	flag.Parse()
	if f.Sock == "" {
		log.Fatal("-sock is required")
	}
	return f
}

// Faults maps a method ("NetworkDriver.Join") to its fault.
type Faults map[string]string

// Faults parses -fault.
func (f *Flags) Faults() Faults {
	out := Faults{}
	for _, kv := range strings.Split(f.Fault, ",") {
		if m, kind, ok := strings.Cut(kv, "="); ok {
			out[m] = kind
		}
	}
	return out
}

// Hit is called at the start of a method: it sleeps (then fails) or exits the process
// as asked. It returns an error for a sleep fault.
func (f *Flags) Hit(method string) error {
	switch f.Faults()[method] {
	case "sleep":
		time.Sleep(f.Sleep)
		return fmt.Errorf("%s: woke up after %s, doing nothing", method, f.Sleep)
	case "exit":
		os.Exit(3)
	}
	return nil
}

// Run registers the garbage faults and the /Test.State endpoint, then serves mux.
func (f *Flags) Run(mux Mux, state func() any) {
	for m, kind := range f.Faults() {
		if kind == "garbage" {
			// More specific than the SDK's "/<method>" pattern, so it wins.
			mux.HandleFunc("POST /"+m, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
				w.Write([]byte(`{"Interface": {"Address": 12`))
			})
		}
	}
	mux.HandleFunc("/Test.State", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(state())
	})
	os.Remove(f.Sock)
	l, err := net.Listen("unix", f.Sock)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(mux.Serve(l))
}
