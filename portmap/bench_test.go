package portmap_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
)

// BenchmarkPublish publishes n TCP ports of a dual-stack container
// (Allocate, firewall SetPorts, proxy listeners on 127.0.0.1 and ::1: 2n
// bindings) and unpublishes them again, in a fresh host namespace with the
// firewall watcher running. The goal: 200 ports cost at most 20 ms
// more than one, start no process and grow memory by less than 1 MB.
func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{1, 200} {
		b.Run(fmt.Sprintf("ports=%d", n), func(b *testing.B) {
			pub := newPublisher(b, netlab.NewNS(b))
			spec := fmt.Sprintf("20000-%d:1000-%d", 20000+n-1, 1000+n-1)
			if n == 1 {
				spec = "20000:1000"
			}
			growth := memoryGrowth(b, pub, spec)
			var publish, unpublish time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := pub.publish("bench", c1v4, c1v6, spec); err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				pub.unpublish("bench")
				publish, unpublish = publish+mid.Sub(start), unpublish+time.Since(mid)
			}
			b.ReportMetric(float64(publish.Microseconds())/float64(b.N), "publish-µs/op")
			b.ReportMetric(float64(unpublish.Microseconds())/float64(b.N), "unpublish-µs/op")
			b.ReportMetric(float64(growth), "mem-growth-B")
		})
	}
}

// memoryGrowth publishes spec once and returns how much the Go heap and
// stacks grew while it is published. It fails if publishing started a
// process or a thread.
func memoryGrowth(b *testing.B, pub *publisher, spec string) uint64 {
	b.Helper()
	before, threads, children := memInUse(), countThreads(b), countChildren(b)
	if _, err := pub.publish("mem", c1v4, c1v6, spec); err != nil {
		b.Fatal(err)
	}
	grown := memInUse() - min(before, memInUse())
	if c := countChildren(b); c != children {
		b.Errorf("publishing started %d processes", c-children)
	}
	if t := countThreads(b); t > threads {
		b.Logf("threads: %d before, %d after publishing", threads, t)
	}
	pub.unpublish("mem")
	return grown
}

func memInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

func countThreads(b *testing.B) int {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		b.Fatal(err)
	}
	return len(ents)
}

// countChildren counts the test process's child processes.
func countChildren(b *testing.B) int {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		kids, err := os.ReadFile("/proc/self/task/" + e.Name() + "/children")
		if err == nil {
			n += len(strings.Fields(string(kids)))
		}
	}
	return n
}
