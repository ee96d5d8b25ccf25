package server

import "sync"

// copyBuffers hands out the buffers cached blobs are copied through. Large
// buffers make a fast copy (1 MiB: see BENCHMARKS.md, P1/E1), but a client
// that stops reading holds its buffer until the send timeout cuts it off, so
// only a bounded number are large; past that, copies use small ones. Memory
// held by stalled responses is thus at most large*1 MiB + the rest at
// 64 KiB, and the connection limit bounds the rest.
type copyBuffers struct {
	slots chan struct{} // one token per large buffer that may be out
	large sync.Pool
	small sync.Pool
}

const (
	largeBuffer = 1 << 20
	smallBuffer = 64 << 10
)

func newCopyBuffers(largeMax int) *copyBuffers {
	if largeMax <= 0 {
		largeMax = 32
	}
	return &copyBuffers{
		slots: make(chan struct{}, largeMax),
		large: sync.Pool{New: func() any { b := make([]byte, largeBuffer); return &b }},
		small: sync.Pool{New: func() any { b := make([]byte, smallBuffer); return &b }},
	}
}

// get returns a buffer and the function that gives it back.
func (c *copyBuffers) get() ([]byte, func()) {
	select {
	case c.slots <- struct{}{}:
		bp := c.large.Get().(*[]byte)
		return *bp, func() { c.large.Put(bp); <-c.slots }
	default:
		bp := c.small.Get().(*[]byte)
		return *bp, func() { c.small.Put(bp) }
	}
}
