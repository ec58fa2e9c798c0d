package bench

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// side is one system's measurement in a row.
type side struct {
	Samples []float64
	Err     error  // what stopped the measurement; Samples may hold what came before
	Pending string // the feature is not in pier yet: the cells say "pending"
	Label   string // qualifies the numbers, e.g. "N=312"
}

func (s side) ok() bool { return s.Pending == "" && len(s.Samples) > 0 }

// kind says how to read a row's ratio.
type kind int

const (
	lowerTime   kind = iota // a duration: lower is faster
	lowerAmount             // memory, processes: lower is less
	higher                  // throughput: higher is better
)

// row is one line of a report table.
type row struct {
	Key          string // for targets
	Name         string // with its unit
	Kind         kind
	Pier, Docker side
	// Floor is the resolution of a lowerAmount row (memory: 1 MiB of Go heap and
	// page noise); a pier median below it is shown as "< Floor" with a bound ratio.
	Floor float64
}

// section is one table of the report.
type section struct {
	Title string
	Intro string
	Rows  []row
	Notes []string
}

// target is one goal of issue 7 with its verdict.
type target struct {
	Goal, Measured, Verdict string
}

// report is what a run measured and how.
type report struct {
	Started  time.Time
	Took     time.Duration
	Command  string
	Env      [][2]string
	Method   []string
	Sections []*section
	Targets  []target
	Problems []string
	rawTput  []float64 // the veth baseline, for the throughput target
}

func (r *report) row(key string) (row, bool) {
	for _, s := range r.Sections {
		for _, rw := range s.Rows {
			if rw.Key == key {
				return rw, true
			}
		}
	}
	return row{}, false
}

// write renders the report as Markdown.
func (r *report) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# pier vs Docker — benchmark report\n\n")
	p("Run %s, took %s. Reproduce with `%s` (see docs/benchmarks.md).\n\n",
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Took.Round(time.Second), r.Command)
	p("## What and how\n\n| | |\n|---|---|\n")
	for _, kv := range r.Env {
		p("| %s | %s |\n", kv[0], kv[1])
	}
	p("\n")
	for _, m := range r.Method {
		p("- %s\n", m)
	}
	p("\n")
	for _, s := range r.Sections {
		s.write(w)
	}
	if len(r.Targets) > 0 {
		p("## Targets of issue 7\n\n| target | measured | verdict |\n|---|---|---|\n")
		for _, t := range r.Targets {
			p("| %s | %s | %s |\n", t.Goal, t.Measured, t.Verdict)
		}
		p("\n")
	}
	if len(r.Problems) > 0 {
		p("## Problems during the run\n\n")
		for _, pr := range r.Problems {
			p("- %s\n", oneLine(pr))
		}
		p("\n")
	}
}

func (s *section) write(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("## %s\n\n", s.Title)
	if s.Intro != "" {
		p("%s\n\n", s.Intro)
	}
	p("| scenario | n pier / Docker | pier median | pier p95 | pier min–max | Docker median | Docker p95 | Docker min–max | pier/Docker |\n")
	p("|---|---|---|---|---|---|---|---|---|\n")
	notes := newNoteSet()
	for _, rw := range s.Rows {
		pc, dc := sideCells(rw.Pier), sideCells(rw.Docker)
		p("| %s | %d / %d | %s | %s | %s | %s | %s | %s | %s |\n", rw.Name, len(rw.Pier.Samples), len(rw.Docker.Samples),
			pc[0], pc[1], pc[2], dc[0], dc[1], dc[2], ratioCell(rw))
		notes.add(rw.Name, "pier", rw.Pier)
		notes.add(rw.Name, "Docker", rw.Docker)
	}
	p("\n")
	lines := append(notes.lines(), s.Notes...)
	for _, n := range lines {
		p("- %s\n", n)
	}
	if len(lines) > 0 {
		p("\n")
	}
}

// noteSet gathers why sides are pending or failed, once per distinct reason.
type noteSet struct {
	order []string
	rows  map[string][]string
}

func newNoteSet() *noteSet { return &noteSet{rows: map[string][]string{}} }

func (n *noteSet) add(rowName, who string, s side) {
	var msg string
	switch {
	case s.Pending != "":
		msg = fmt.Sprintf("**%s pending**: %s", who, s.Pending)
	case s.Err != nil:
		msg = fmt.Sprintf("**%s failed**: %s", who, oneLine(s.Err.Error()))
	default:
		return
	}
	if _, ok := n.rows[msg]; !ok {
		n.order = append(n.order, msg)
	}
	n.rows[msg] = append(n.rows[msg], rowName)
}

func (n *noteSet) lines() []string {
	out := make([]string, 0, len(n.order))
	for _, msg := range n.order {
		out = append(out, fmt.Sprintf("%s (rows: %s)", msg, strings.Join(n.rows[msg], "; ")))
	}
	return out
}

// sideCells returns the median, p95 and min–max cells.
func sideCells(s side) [3]string {
	switch {
	case s.Pending != "":
		return [3]string{"pending", "", ""}
	case len(s.Samples) == 0 && s.Err != nil:
		return [3]string{"failed", "", ""}
	case len(s.Samples) == 0:
		return [3]string{"—", "", ""}
	}
	sum := summarize(s.Samples)
	med := num(sum.Median)
	if s.Label != "" {
		med += " (" + s.Label + ")"
	}
	return [3]string{med, num(sum.P95), num(sum.Min) + "–" + num(sum.Max)}
}

// ratioCell is pier's median over Docker's, with how to read it.
func ratioCell(rw row) string {
	if !rw.Pier.ok() || !rw.Docker.ok() {
		return "—"
	}
	pm, dm := summarize(rw.Pier.Samples).Median, summarize(rw.Docker.Samples).Median
	switch {
	case pm == 0 && dm == 0:
		return "= (both 0)"
	case rw.Kind == lowerAmount && rw.Floor > 0 && pm < rw.Floor && dm < rw.Floor:
		return fmt.Sprintf("both < %s", num(rw.Floor))
	case rw.Kind == lowerAmount && rw.Floor > 0 && pm < rw.Floor:
		return fmt.Sprintf("pier < %s: > %s× less", num(rw.Floor), ratio(dm/rw.Floor))
	case rw.Kind == lowerAmount && pm <= 0 && dm > 0:
		return "≤ 0 (pier: none measurable)"
	case dm <= 0 || pm <= 0:
		return "—"
	}
	r := pm / dm
	switch rw.Kind {
	case lowerTime:
		if r <= 1 {
			return fmt.Sprintf("%s (%s× faster)", ratio(r), ratio(1/r))
		}
		return fmt.Sprintf("%s (%s× slower)", ratio(r), ratio(r))
	case lowerAmount:
		if r <= 1 {
			return fmt.Sprintf("%s (%s× less)", ratio(r), ratio(1/r))
		}
		return fmt.Sprintf("%s (%s× more)", ratio(r), ratio(r))
	}
	return ratio(r) + "×"
}

// speedup is Docker's median over pier's (how many times better pier is) for rows
// where lower is better, pier's over Docker's otherwise; ok is false without both.
func speedup(rw row) (float64, bool) {
	if !rw.Pier.ok() || !rw.Docker.ok() {
		return 0, false
	}
	pm, dm := summarize(rw.Pier.Samples).Median, summarize(rw.Docker.Samples).Median
	if rw.Kind == higher {
		if dm == 0 {
			return 0, false
		}
		return pm / dm, true
	}
	if pm <= 0 {
		return math.Inf(1), true
	}
	return dm / pm, true
}

// num formats a measurement with three significant digits, and thousands
// separators above 10,000.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 10000:
		return thousands(int64(math.Round(v)))
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case a == 0:
		return "0"
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// ratio formats a ratio: one decimal from 1 to 100 (so 9.96 and 10.06 stay apart
// around a 10× target), two below 1, none above 100.
func ratio(r float64) string {
	switch {
	case math.IsInf(r, 1):
		return "∞"
	case r >= 100:
		return strconv.FormatFloat(r, 'f', 0, 64)
	case r >= 1:
		return strconv.FormatFloat(r, 'f', 1, 64)
	case r < 0.1:
		return strconv.FormatFloat(r, 'g', 2, 64)
	}
	return strconv.FormatFloat(r, 'f', 2, 64)
}

// oneLine keeps a message on one Markdown line.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "|", `\|`)
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}
