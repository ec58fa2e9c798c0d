package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/piernet/pier/cnm"
)

// The benchmarks measure API round trips as Docker's SDK sees them: moby client →
// unix socket → this server → a real controller in a fresh network namespace. Each
// iteration's setup and teardown are untimed; median-ns/op is the median round trip
// (the goals are medians: create ≤ 5 ms, delete ≤ 10 ms, connect ≤ 3 ms,
// disconnect ≤ 5 ms).

func BenchmarkNetworkCreate(b *testing.B) {
	runBoth(b, func(b *testing.B, e *env, o ops) {
		measure(b, nil, func(i int) error { return o.create(fmt.Sprintf("n%d", i)) },
			func(i int) { e.deleteNetwork(fmt.Sprintf("n%d", i)) })
	})
}

func BenchmarkNetworkDelete(b *testing.B) {
	runBoth(b, func(b *testing.B, e *env, o ops) {
		measure(b, func(i int) { e.createNetwork(fmt.Sprintf("n%d", i)) },
			func(i int) error { return o.remove(fmt.Sprintf("n%d", i)) }, nil)
	})
}

func BenchmarkNetworkConnect(b *testing.B) {
	runBoth(b, func(b *testing.B, e *env, o ops) {
		e.detachedSandbox("app", "s")
		measure(b, nil, func(int) error { return o.connect("app", "s") },
			func(int) { e.must(200, "POST", "/networks/app/disconnect", `{"Container":"s"}`) })
	})
}

func BenchmarkNetworkDisconnect(b *testing.B) {
	runBoth(b, func(b *testing.B, e *env, o ops) {
		e.detachedSandbox("app", "s")
		measure(b, func(int) { e.must(200, "POST", "/networks/app/connect", `{"Container":"s"}`) },
			func(int) error { return o.disconnect("app", "s") }, nil)
	})
}

// ops are the measured operations, through the Docker SDK or straight on the
// controller (the baseline: the difference is the API's cost).
type ops struct {
	create, remove      func(name string) error
	connect, disconnect func(net, sb string) error
}

// runBoth runs bench as "sdk" (moby client over a unix socket) and as "controller".
func runBoth(b *testing.B, bench func(*testing.B, *env, ops)) {
	b.Run("sdk", func(b *testing.B) {
		e, cli := newBenchServer(b)
		ctx := b.Context()
		bench(b, e, ops{
			create: func(n string) error {
				_, err := cli.NetworkCreate(ctx, n, client.NetworkCreateOptions{Driver: "bridge"})
				return err
			},
			remove: func(n string) error { _, err := cli.NetworkRemove(ctx, n, client.NetworkRemoveOptions{}); return err },
			connect: func(n, sb string) error {
				_, err := cli.NetworkConnect(ctx, n, client.NetworkConnectOptions{Container: sb})
				return err
			},
			disconnect: func(n, sb string) error {
				_, err := cli.NetworkDisconnect(ctx, n, client.NetworkDisconnectOptions{Container: sb})
				return err
			},
		})
	})
	b.Run("controller", func(b *testing.B) {
		e := newEnv(b)
		c, ctx := e.st.Controller, b.Context()
		bench(b, e, ops{
			create:     func(n string) error { _, err := c.CreateNetwork(ctx, cnm.NetworkSpec{Name: n}); return err },
			remove:     func(n string) error { return c.DeleteNetwork(ctx, n) },
			connect:    func(n, sb string) error { _, err := c.Connect(ctx, n, sb, cnm.EndpointSpec{}); return err },
			disconnect: func(n, sb string) error { return c.Disconnect(ctx, n, sb) },
		})
	})
}

// detachedSandbox creates network net and a sandbox sb connected to nothing.
func (e *env) detachedSandbox(net, sb string) {
	e.createNetwork(net)
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"`+sb+`","Networks":[{"Network":"none"}]}`)
	e.must(200, "POST", "/networks/none/disconnect", `{"Container":"`+sb+`"}`)
}

// measure runs op b.N times with untimed setup and teardown around each call and
// reports the median duration of op.
func measure(b *testing.B, setup func(int), op func(int) error, teardown func(int)) {
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if setup != nil {
			b.StopTimer()
			setup(i)
			b.StartTimer()
		}
		start := time.Now()
		if err := op(i); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		if teardown != nil {
			b.StopTimer()
			teardown(i)
			b.StartTimer()
		}
	}
	b.StopTimer()
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Nanoseconds()), "median-ns/op")
}

// newBenchServer serves a fresh env's API on a unix socket and returns a Docker SDK
// client for it.
func newBenchServer(b *testing.B) (*env, *client.Client) {
	b.Helper()
	e := newEnv(b)
	sock := filepath.Join(b.TempDir(), "pier.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: e.srv}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	b.Cleanup(func() {
		_ = srv.Shutdown(context.Background())
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			b.Errorf("serving: %v", err)
		}
	})
	cli, err := client.New(client.WithHost("unix://"+sock), client.WithAPIVersionNegotiation())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	return e, cli
}

func (e *env) createNetwork(name string) {
	e.t.Helper()
	if _, err := e.st.Controller.CreateNetwork(context.Background(), cnm.NetworkSpec{Name: name}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) deleteNetwork(name string) {
	e.t.Helper()
	if err := e.st.Controller.DeleteNetwork(context.Background(), name); err != nil {
		e.t.Fatal(err)
	}
}
