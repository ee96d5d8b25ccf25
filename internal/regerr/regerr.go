// Package regerr is regcache's one error type. Every failure that can reach
// a client is classified once, where it happens, into a Kind (not found,
// rate limited, unavailable, bad content, ...), with the registry and the
// cause attached. The server maps kinds to OCI error codes and HTTP statuses
// in one table; nothing else looks at upstream statuses or codes.
//
// An Error has two faces. Error() is for operators and logs: it names the
// operation, the upstream's status and code and, redacted and shortened,
// the upstream's own message. ClientMessage() is for clients: regcache's
// own words only, never free-form text from an upstream, which could echo
// a credential back.
package regerr

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind classifies a failure by what the client and the cache should do
// about it.
type Kind uint8

const (
	// Internal is a failure regcache did not expect: a bug, or an error
	// nobody classified.
	Internal Kind = iota
	// NotFound: the upstream says the manifest, blob or repository does
	// not exist (or the reference cannot exist).
	NotFound
	// NameUnknown: the request names a registry that is not configured.
	NameUnknown
	// Invalid: the client's request is malformed (name, digest, query).
	Invalid
	// Unsupported: an operation a read-only cache does not offer.
	Unsupported
	// Unauthorized: the client must log in to regcache.
	Unauthorized
	// Denied: the upstream refused regcache's own credentials.
	Denied
	// RateLimited: the upstream answered 429, or asked for a pause that
	// has not passed. RetryAfter says for how long, when known.
	RateLimited
	// Unavailable: the upstream could not be reached, timed out, failed
	// with 5xx, or is in backoff. It says nothing about the content.
	Unavailable
	// BadContent: the upstream sent bytes that do not match their digest,
	// or that are not what was asked for (not a manifest, not a list).
	BadContent
	// TooLarge: the upstream's answer exceeds a limit regcache enforces.
	TooLarge
	// Storage: the content store failed (full, unreachable, read-only).
	Storage
)

var kindNames = [...]string{
	Internal: "internal", NotFound: "not_found", NameUnknown: "name_unknown", Invalid: "invalid",
	Unsupported: "unsupported", Unauthorized: "unauthorized", Denied: "denied", RateLimited: "rate_limited",
	Unavailable: "unavailable", BadContent: "bad_content", TooLarge: "too_large", Storage: "storage",
}

// String is a short snake_case name, used as a metric and log label.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Error is a classified failure.
type Error struct {
	Kind Kind
	// Registry is the configured registry, or the mirror, involved.
	Registry string
	// Op names the operation: "HEAD manifest", "GET blob", "store blob".
	Op string
	// Repo and Ref name the content, when there is any.
	Repo, Ref string
	// Status is the upstream's HTTP status; 0 when there was no answer.
	Status int
	// Code is the upstream's OCI error code, when it sent one.
	Code string
	// Detail is the upstream's own message, redacted and shortened. It
	// goes to logs only, never to clients.
	Detail string
	// Message is regcache's own explanation, safe to show a client.
	Message string
	// RetryAfter is how long until asking again may succeed.
	RetryAfter time.Duration
	// Err is the cause, if any.
	Err error
}

// New returns an Error of kind k with regcache's own message.
func New(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

// Wrap classifies err as k, keeping it as the cause. An err that already
// is (or wraps) an *Error is returned unchanged: the first classification
// is the one that knew most.
func Wrap(k Kind, op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Kind: k, Op: op, Err: err}
}

func (e *Error) Unwrap() error { return e.Err }

// Error is the operator's view: everything known, the upstream's message
// included (it is redacted where it is read).
func (e *Error) Error() string {
	var b strings.Builder
	e.writeSubject(&b)
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter.Round(time.Second))
	}
	return b.String()
}

// ClientMessage is the client's view: which registry, what was asked, the
// upstream's status and code, and regcache's own message. It never holds
// the upstream's free-form text or a cause's text.
func (e *Error) ClientMessage() string {
	var b strings.Builder
	e.writeSubject(&b)
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

func (e *Error) writeSubject(b *strings.Builder) {
	parts := 0
	sep := func() {
		if parts > 0 {
			b.WriteString(": ")
		}
		parts++
	}
	if e.Registry != "" {
		sep()
		b.WriteString("upstream ")
		b.WriteString(e.Registry)
	}
	if e.Op != "" {
		sep()
		b.WriteString(e.Op)
		if e.Repo != "" {
			b.WriteString(" ")
			b.WriteString(e.Repo)
			if e.Ref != "" {
				if strings.Contains(e.Ref, ":") {
					b.WriteString("@")
				} else {
					b.WriteString(":")
				}
				b.WriteString(e.Ref)
			}
		}
	}
	if e.Status != 0 || e.Code != "" {
		sep()
		if e.Status != 0 {
			fmt.Fprintf(b, "status %d", e.Status)
			if e.Code != "" {
				b.WriteString(" ")
			}
		}
		b.WriteString(e.Code)
	}
	if parts == 0 {
		b.WriteString(e.Kind.String())
	}
}

// KindOf returns err's kind: that of the *Error it is or wraps; Unavailable
// for a deadline that passed (an upstream too slow to answer); Internal for
// anything else unclassified.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Unavailable
	}
	return Internal
}

// Is reports whether err is classified as k.
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }

// RetryAfter returns the pause err asks for, 0 when none.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// Transient reports whether err says nothing about the content, only about
// an upstream's health right now: the cue to serve stale content, or to try
// another source.
func Transient(err error) bool {
	switch KindOf(err) {
	case RateLimited, Unavailable:
		return true
	}
	return false
}
