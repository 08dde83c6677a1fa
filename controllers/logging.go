package controllers

import "github.com/go-logr/logr"

// MaxLogVerbosity is the highest V level keygate's logger ever enables.
// client-go logs request and response bodies at V(8) and above with the
// reconcile context's logger, and the bodies of credentials Secret writes
// hold secrets: capping the verbosity keeps them out of the logs whatever
// --zap-log-level says.
const MaxLogVerbosity = 5

// CapVerbosity returns l with every level above MaxLogVerbosity disabled.
func CapVerbosity(l logr.Logger) logr.Logger {
	if l.GetSink() == nil {
		return l
	}
	return logr.New(cappedSink{l.GetSink()})
}

type cappedSink struct{ logr.LogSink }

func (s cappedSink) Enabled(level int) bool {
	return level <= MaxLogVerbosity && s.LogSink.Enabled(level)
}

func (s cappedSink) WithValues(kv ...any) logr.LogSink {
	return cappedSink{s.LogSink.WithValues(kv...)}
}

func (s cappedSink) WithName(name string) logr.LogSink { return cappedSink{s.LogSink.WithName(name)} }

func (s cappedSink) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := s.LogSink.(logr.CallDepthLogSink); ok {
		return cappedSink{cd.WithCallDepth(depth)}
	}
	return s
}
