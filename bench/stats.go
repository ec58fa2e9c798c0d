package bench

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
)

// summary describes a set of samples.
type summary struct {
	N                     int
	Median, P95, Min, Max float64
}

// summarize returns the median (mean of the two middle samples for an even count),
// the 95th percentile (nearest rank) and the range. An empty set gives N = 0.
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	rank := int(math.Ceil(0.95*float64(n))) - 1
	return summary{N: n, Median: med, P95: s[max(rank, 0)], Min: s[0], Max: s[n-1]}
}

// forEach runs fn on every item with at most workers at a time and joins the errors.
func forEach[T any](ctx context.Context, items []T, workers int, fn func(context.Context, T) error) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	sem := make(chan struct{}, workers)
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, it); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
