package dashboard

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// count writes a whole number with thousands separators: 12,345.
func count(f float64) string {
	s := strconv.FormatInt(int64(math.Round(f)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// bytesIEC writes a byte count in binary units: 512 B, 1.5 KiB, 12.3 MiB.
func bytesIEC(f float64) string {
	if f < 1024 {
		return count(f) + " B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	i := -1
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f >= 100 {
		return fmt.Sprintf("%.0f %s", f, units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// percent writes part/whole as a percentage, "–" when whole is zero.
func percent(part, whole float64) string {
	if whole <= 0 {
		return "–"
	}
	p := 100 * part / whole
	if p > 99.9 && part < whole {
		// Never round a miss away: 99.96 % is not 100 %.
		return "99.9 %"
	}
	return strconv.FormatFloat(p, 'f', 1, 64) + " %"
}

// duration writes d in the two largest units: 6 h, 2 h 14 min, 45 s.
func duration(d time.Duration) string {
	d = d.Round(time.Second)
	if d <= 0 {
		return "0 s"
	}
	days, d := d/(24*time.Hour), d%(24*time.Hour)
	h, d := d/time.Hour, d%time.Hour
	m, d := d/time.Minute, d%time.Minute
	s := d / time.Second
	var parts []string
	for _, u := range []struct {
		n    time.Duration
		unit string
	}{{days, "d"}, {h, "h"}, {m, "min"}, {s, "s"}} {
		if u.n > 0 || len(parts) > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", u.n, u.unit))
		}
	}
	if len(parts) > 2 {
		parts = parts[:2]
	}
	if len(parts) == 2 && strings.HasPrefix(parts[1], "0 ") {
		parts = parts[:1]
	}
	return strings.Join(parts, " ")
}

// ago writes how long before now t was.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return duration(d) + " ago"
}

// clock writes t as a UTC time of day, with the date when it is not on
// now's day.
func clock(t, now time.Time) string {
	t, now = t.UTC(), now.UTC()
	if t.YearDay() == now.YearDay() && t.Year() == now.Year() {
		return t.Format("15:04 UTC")
	}
	return t.Format("Jan 2 15:04 UTC")
}

// num writes a coordinate or a width for an SVG attribute.
func num(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) }

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return count(float64(n)) + " " + many
}
