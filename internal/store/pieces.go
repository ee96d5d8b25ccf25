package store

import "io"

// filePiece is the most one write(2) to a file carries. A larger write lets
// the kernel (Linux 6.x, on ext4 and others with large folios) put it in a
// page-cache folio of that size, carved from the large free blocks that a
// VM's memory balloon reports to its host as unused; the first touch of
// each page then faults on the host. On the benchmark VM (free page
// reporting at order 9), writing 512 MiB with dd took up to 1.5 s of
// kernel time in 1 MiB writes and never more than 0.15 s in 256 or
// 512 KiB ones, and a cold pull through regcache spent 5× the kernel time
// in its file writes (BENCHMARKS.md, "Workload 4: the file writes"). On a
// host without a balloon, three more system calls per MiB cost nothing
// measurable.
const filePiece = 256 << 10

// WritePieces writes p to w, a file, in writes of at most 256 KiB: how the
// store writes blobs, and how anything else on the download path that
// writes a file should.
func WritePieces(w io.Writer, p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		q := p[:min(len(p), filePiece)]
		m, err := w.Write(q)
		n += m
		if err != nil {
			return n, err
		}
		if m < len(q) {
			return n, io.ErrShortWrite
		}
		p = p[m:]
	}
	return n, nil
}
