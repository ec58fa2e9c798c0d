package member

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// noise are etcd log messages (or error texts) that a normal Close or a peer going
// away produces; they are not the user's business.
var noise = []string{
	"http: Server closed",
	"use of closed network connection",
	"server closed",
	// a joiner waits (and says why in its error if it gives up)
	"rejecting member add request; local member has not been connected to majority peers",
	"retrying of unary invoker failed",
	// start-up notes on every member, not actionable
	"Running http and grpc server on single port",
	"simple token is not cryptographically signed",
	"Failed to detect schema version",
	"failed to update storage version",
}

// zapLogger returns a zap logger for etcd (server and client) that passes warnings
// and errors to log with component=etcd and drops everything else, and the shutdown
// noise.
func zapLogger(log *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{log: log.With("component", "etcd")})
}

// slogCore is a zapcore.Core writing to a slog.Logger.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(append([]zapcore.Field(nil), c.fields...), fs...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fs...) {
		f.AddTo(enc)
	}
	attrs := make([]any, 0, 2*len(enc.Fields))
	text := e.Message
	keys := slices.Sorted(maps.Keys(enc.Fields))
	for _, k := range keys {
		s := fmt.Sprint(enc.Fields[k])
		text += " " + s
		attrs = append(attrs, k, s)
	}
	if isNoise(text) {
		return nil
	}
	level := slog.LevelWarn
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.log.Log(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }

func isNoise(s string) bool {
	for _, n := range noise {
		if strings.Contains(s, n) {
			return true
		}
	}
	return false
}
