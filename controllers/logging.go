package controllers

import (
	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

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

// QuietConflicts returns l with every error-level entry whose error is a
// conflict (HTTP 409: "the object has been modified", or "already exists")
// logged at V(1) instead. Conflicts are expected whenever replicas race for
// the same object (the webhook certificate Secret, the leader Lease at a
// fresh start) and they are retried; they are not errors a user has to act on.
func QuietConflicts(l logr.Logger) logr.Logger {
	if l.GetSink() == nil {
		return l
	}
	return logr.New(newConflictSink(l.GetSink()))
}

// conflictSink passes everything through; its Error adds a stack frame, so it
// calls inner, which reports the caller one frame further up.
type conflictSink struct {
	logr.LogSink
	inner logr.LogSink
}

func newConflictSink(s logr.LogSink) conflictSink {
	inner := s
	if cd, ok := s.(logr.CallDepthLogSink); ok {
		inner = cd.WithCallDepth(1)
	}
	return conflictSink{LogSink: s, inner: inner}
}

func (s conflictSink) Error(err error, msg string, kv ...any) {
	if !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err) {
		s.inner.Error(err, msg, kv...)
		return
	}
	if s.inner.Enabled(1) {
		s.inner.Info(1, msg, append(kv, "error", err.Error(), "retried", true)...)
	}
}

func (s conflictSink) WithValues(kv ...any) logr.LogSink {
	return newConflictSink(s.LogSink.WithValues(kv...))
}

func (s conflictSink) WithName(name string) logr.LogSink {
	return newConflictSink(s.LogSink.WithName(name))
}

func (s conflictSink) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := s.LogSink.(logr.CallDepthLogSink); ok {
		return newConflictSink(cd.WithCallDepth(depth))
	}
	return s
}
