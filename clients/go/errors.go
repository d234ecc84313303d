package leanmq

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// DeadLetterError is returned (possibly wrapped) by a handler to move the
// message to the dead-letter queue at once, whatever its attempt. The text
// of the error the handler returned becomes the DLQ failure reason.
type DeadLetterError struct {
	// Err is the cause. Its text is the reason.
	Err error
}

func (e *DeadLetterError) Error() string {
	if e == nil || e.Err == nil {
		return "dead letter"
	}
	return e.Err.Error()
}

func (e *DeadLetterError) Unwrap() error { return e.Err }

// DeadLetter returns an error that makes the SDK dead-letter the delivery
// (Nack with dead_letter set and the error text as reason). The argument is
// the cause: an error is wrapped (so errors.Is/As still see it), a string
// becomes the reason, anything else is formatted with fmt.Sprint.
//
//	return leanmq.DeadLetter("unknown order status")
//	return leanmq.DeadLetter(err)
func DeadLetter(cause any) error {
	switch c := cause.(type) {
	case nil:
		return &DeadLetterError{}
	case error:
		return &DeadLetterError{Err: c}
	case string:
		return &DeadLetterError{Err: errors.New(c)}
	default:
		return &DeadLetterError{Err: errors.New(fmt.Sprint(c))}
	}
}

// DeadLetterf is DeadLetter(fmt.Errorf(format, args...)).
func DeadLetterf(format string, args ...any) error {
	return &DeadLetterError{Err: fmt.Errorf(format, args...)}
}

// RetryAfterError is returned (possibly wrapped) by a handler to have the
// message redelivered after Delay (Nack with that delay). A Delay of zero
// leaves the delay to the broker's retry policy; it is capped at 7 days.
type RetryAfterError struct {
	Delay time.Duration
	// Err is an optional cause, recorded as the failure reason.
	Err error
}

func (e *RetryAfterError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("retry after %s: %s", e.Delay, e.Err)
	}
	return fmt.Sprintf("retry after %s", e.Delay)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter returns an error that makes the SDK nack the delivery with the
// given redelivery delay.
//
//	if errors.Is(err, errRateLimited) { return leanmq.RetryAfter(30 * time.Second) }
func RetryAfter(d time.Duration) error { return &RetryAfterError{Delay: d} }

// maxNackDelay is the broker's limit for NackRequest.delay.
const maxNackDelay = 7 * 24 * time.Hour

// maxReasonBytes is the broker's limit for NackRequest.reason.
const maxReasonBytes = 4096

// PanicError is what a handler panic is turned into; the delivery is nacked
// as for any other error.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panic: %v", e.Value) }

// sanitizeReason makes s a valid UTF-8 string (proto3 requires it) of at
// most maxReasonBytes bytes, cut on a rune boundary.
func sanitizeReason(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= maxReasonBytes {
		return s
	}
	cut := maxReasonBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}
