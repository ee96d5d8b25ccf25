package warm

import (
	"bytes"
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// screen replays what a terminal would show for out: text, newlines,
// cursor up (ESC [ n A) and erase to the end of the screen (ESC [ J).
func screen(t *testing.T, out string) []string {
	t.Helper()
	var lines []string
	row := 0
	esc := regexp.MustCompile(`^\x1b\[(\d*)([AJ])`)
	for len(out) > 0 {
		if m := esc.FindStringSubmatch(out); m != nil {
			out = out[len(m[0]):]
			switch m[2] {
			case "A":
				n, _ := strconv.Atoi(m[1])
				row -= n
				if row < 0 {
					t.Fatalf("cursor moved above the first line")
				}
			case "J":
				lines = lines[:row]
			}
			continue
		}
		i := strings.IndexAny(out, "\n\x1b")
		if i < 0 {
			i = len(out)
		}
		text := out[:i]
		out = out[i:]
		for len(lines) <= row {
			lines = append(lines, "")
		}
		lines[row] += text
		if strings.HasPrefix(out, "\n") {
			out = out[1:]
			row++
		}
	}
	return lines[:row]
}

func TestDisplayOnATerminal(t *testing.T) {
	refs := []string{"alpine:3.20", "node:21", "redis:7"}
	progress := []*Progress{{}, {}, {}}
	var out bytes.Buffer
	d := NewDisplay(&out, true, 80, refs, progress)

	progress[0].started.Store(true)
	progress[0].layers.Store(3)
	progress[0].layersDone.Store(1)
	progress[0].bytesTotal.Store(3 << 20)
	progress[0].bytesDone.Store(1 << 20)
	progress[1].started.Store(true)
	d.Redraw()
	d.Redraw() // a redraw replaces the lines, it does not add to them
	want := []string{
		"      alpine:3.20  1/3 layers  1.0 MiB / 3.0 MiB",
		"      node:21  0/0 layers  0 B / 0 B",
	}
	if got := screen(t, out.String()); !slices.Equal(got, want) {
		t.Errorf("after two redraws the screen is\n%q\nwant\n%q", got, want)
	}

	d.Done(0, Result{Ref: "alpine:3.20", Digest: "sha256:aa", Manifests: 2, Layers: 3, Blobs: 4, Bytes: 3 << 20, Duration: 1500 * time.Millisecond})
	progress[2].started.Store(true)
	d.Redraw()
	d.Done(2, Result{Ref: "redis:7", Err: errors.New("manifest unknown")})
	want = []string{
		"ok    alpine:3.20  sha256:aa  2 manifests, 3 layers, 4 blobs, 3.0 MiB in 1.5s",
		"FAIL  redis:7: manifest unknown",
		"      node:21  0/0 layers  0 B / 0 B",
	}
	if got := screen(t, out.String()); !slices.Equal(got, want) {
		t.Errorf("after two images ended the screen is\n%q\nwant\n%q", got, want)
	}
	d.Finish()
	if got := screen(t, out.String()); !slices.Equal(got, want[:2]) {
		t.Errorf("after Finish the screen is\n%q\nwant\n%q", got, want[:2])
	}
}

// Off a terminal there are only result lines: no escapes, no progress.
func TestDisplayInALog(t *testing.T) {
	progress := []*Progress{{}}
	progress[0].started.Store(true)
	var out bytes.Buffer
	d := NewDisplay(&out, false, 0, []string{"alpine:3.20"}, progress)
	d.Redraw()
	d.Done(0, Result{Ref: "alpine:3.20", Digest: "sha256:aa", Manifests: 1, Layers: 1, Blobs: 2, Bytes: 512, Duration: time.Second})
	d.Finish()
	if want := "ok    alpine:3.20  sha256:aa  1 manifest, 1 layer, 2 blobs, 512 B in 1s\n"; out.String() != want {
		t.Errorf("log output %q, want %q", out.String(), want)
	}
}

// A live line never wraps: it would take two rows and the redraw would
// leave one behind.
func TestDisplayTruncatesToTheWidth(t *testing.T) {
	progress := []*Progress{{}}
	progress[0].started.Store(true)
	var out bytes.Buffer
	ref := "registry.example.com/" + strings.Repeat("very-long-name/", 6) + "app:1"
	d := NewDisplay(&out, true, 50, []string{ref}, progress)
	d.Redraw()
	for _, l := range screen(t, out.String()) {
		if n := len([]rune(l)); n >= 50 {
			t.Errorf("a %d-column line on a 50-column terminal: %q", n, l)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
