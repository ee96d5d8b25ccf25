package warm

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Display shows a warm run. Each image's result is one line, printed when
// it ends. On a terminal the images still running are also shown below
// those lines, one each with its layers and bytes so far, redrawn in place
// (the cursor goes back up over them and clears them); in a log or a pipe
// there are only the result lines.
type Display struct {
	w        io.Writer
	tty      bool
	width    int
	refs     []string
	progress []*Progress
	mu       sync.Mutex
	ended    []bool
	drawn    int // live lines on the screen below the result lines
}

// NewDisplay shows refs, followed by progress, on w; tty says w is a
// terminal width columns wide.
func NewDisplay(w io.Writer, tty bool, width int, refs []string, progress []*Progress) *Display {
	if width < 40 {
		width = 80
	}
	return &Display{w: w, tty: tty, width: width, refs: refs, progress: progress, ended: make([]bool, len(refs))}
}

// Done prints image i's result line.
func (d *Display) Done(i int, r Result) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ended[i] = true
	d.clear()
	fmt.Fprintln(d.w, ResultLine(r))
	d.draw()
}

// Redraw updates the live lines; it does nothing off a terminal.
func (d *Display) Redraw() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clear()
	d.draw()
}

// Finish removes the live lines.
func (d *Display) Finish() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clear()
}

// clear moves the cursor up over the live lines and erases to the end of
// the screen.
func (d *Display) clear() {
	if d.drawn > 0 {
		fmt.Fprintf(d.w, "\x1b[%dA\x1b[J", d.drawn)
		d.drawn = 0
	}
}

func (d *Display) draw() {
	if !d.tty {
		return
	}
	var b strings.Builder
	for i, ref := range d.refs {
		s := d.progress[i].Snapshot()
		if d.ended[i] || !s.Started {
			continue
		}
		line := fmt.Sprintf("      %s  %d/%d layers  %s / %s", ref, s.LayersDone, s.Layers, HumanBytes(s.BytesDone), HumanBytes(s.BytesTotal))
		// A line that wraps would take two rows and break the redraw.
		if r := []rune(line); len(r) >= d.width {
			line = string(r[:d.width-1])
		}
		b.WriteString(line + "\n")
		d.drawn++
	}
	io.WriteString(d.w, b.String())
}

// ResultLine is the line printed for one image:
//
//	ok    alpine:3.20  sha256:...  2 manifests, 1 layer, 2 blobs, 3.4 MiB in 1.2s
//	FAIL  nosuch/image:1: ...
func ResultLine(r Result) string {
	if r.Err != nil {
		return fmt.Sprintf("FAIL  %s: %v", r.Ref, r.Err)
	}
	return fmt.Sprintf("ok    %s  %s  %s, %s, %s, %s in %s", r.Ref, r.Digest, plural(r.Manifests, "manifest"), plural(r.Layers, "layer"),
		plural(r.Blobs, "blob"), HumanBytes(r.Bytes), r.Duration.Round(time.Millisecond))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// HumanBytes writes n in binary units: 512 B, 3.4 MiB.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
