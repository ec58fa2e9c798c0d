// Package bench is pier's side-by-side benchmark against the Docker engine (issue 7).
//
// It starts pierd and dockerd, each in a network namespace of its own (dockerd also
// in a private mount namespace with its own /run), drives both through their APIs —
// pier's typed client and the moby SDK — alternating pier and Docker on every
// iteration, and renders a Markdown report with medians, p95, min–max and the
// pier/Docker ratio of every row.
//
// It owns nothing of pier itself and must not touch the machine's own namespace:
// every process, namespace, mount and file it creates carries the "pierbench" name
// or lives under the work directory, and cleanup (also after a failure, Ctrl-C or a
// killed earlier run) stops its daemons, kills the processes left in its namespaces
// by PID, unmounts what is under the work directory and deletes it. It never asserts
// timings: it measures and reports, including Docker-side failures.
package bench
