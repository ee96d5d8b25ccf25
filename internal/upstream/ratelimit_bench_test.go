package upstream

import "testing"

func BenchmarkParseRateLimit(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := parseRateLimit("76;w=21600"); !ok {
			b.Fatal("not parsed")
		}
	}
}
