package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// report renders the results as Markdown: one table per workload, then the
// issue's targets with the ratios they are judged by.
func (e *env) report(took time.Duration, args string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Results\n\n`go run ./bench %s` — %s, %d repetition(s) per figure (median shown), load runs of %s.\n\n",
		args, time.Now().UTC().Format("2006-01-02 15:04 UTC"), e.reps, e.loadDur)
	fmt.Fprintf(&b, "```\n%s```\n\n", machine())
	if len(e.results) == 0 {
		goto extra
	}
	fmt.Fprintf(&b, "| # | case | server | median | unit | server CPU s | server CPU per unit | peak RSS MiB | tool / note |\n")
	fmt.Fprintf(&b, "|---|---|---|---:|---|---:|---:|---:|---|\n")
	for _, r := range e.results {
		cpu, per, rss := "", "", ""
		if len(r.CPU) > 0 {
			cpu = fmtNum(r.cpuMedian())
		}
		if r.PerUnit != "" && len(r.Work) > 0 {
			per = fmtNum(r.cpuPer()) + " " + r.PerUnit
		}
		if len(r.RSS) > 0 {
			rss = fmtNum(r.rssMedian())
		}
		note := strings.TrimSpace(strings.Join([]string{r.Tool, r.Note}, "; "))
		note = strings.Trim(note, "; ")
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Workload, r.Case, r.Server, fmtNum(r.median()), r.Unit, cpu, per, rss, note)
	}
	b.WriteString("\n### Targets (issues 5 and 9)\n\n| target | regcache | reference | ratio | limit | result |\n|---|---:|---:|---:|---:|---|\n")
	for _, t := range e.targets() {
		res := "MISS"
		if t.ok {
			res = "met"
		}
		if t.na {
			res = "n/a"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", t.name, t.value, t.ref, t.ratio, t.limit, res)
	}
extra:
	for _, x := range e.extra {
		b.WriteString("\n" + x)
	}
	if len(e.loads) > 0 {
		fmt.Fprintf(&b, "\nMachine load (other processes share the %d cores; more than the harness's own ~2 means contention):\n\n", runtime.NumCPU())
		for _, l := range e.loads {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	fmt.Fprintf(&b, "\nHarness wall time: %s.\n", took.Round(time.Second))
	return b.String()
}

type target struct {
	name, value, ref, ratio, limit string
	ok, na                         bool
}

func (e *env) targets() []target {
	var out []target
	get := func(w, c, s string) (row, bool) { return e.find(w, c, s) }
	ratioT := func(name string, a, b row, aok, bok bool, useCPU bool, atLeast bool, limit float64, refName string) {
		if !aok || !bok {
			return
		}
		av, bv := a.median(), b.median()
		if useCPU {
			av, bv = a.cpuPer(), b.cpuPer()
		}
		t := target{name: name, value: fmtNum(av), ref: fmtNum(bv) + " (" + refName + ")"}
		if bv == 0 {
			t.na = true
			out = append(out, t)
			return
		}
		r := av / bv
		t.ratio = fmt.Sprintf("%.2f×", r)
		if atLeast {
			t.limit, t.ok = fmt.Sprintf("≥ %.2f×", limit), r >= limit
		} else {
			t.limit, t.ok = fmt.Sprintf("≤ %.2f×", limit), r <= limit
		}
		out = append(out, t)
	}
	// 1, 2: against the faster nginx configuration.
	for _, w := range []struct {
		id string
		n  int
	}{{"1", 1}, {"2", 16}} {
		cas := fmt.Sprintf("%d MiB blob, %d stream(s)", e.blob.size>>20, w.n)
		rc, ok := get(w.id, cas, "regcache")
		n1, ok1 := get(w.id, cas, "nginx-sendfile")
		n2, ok2 := get(w.id, cas, "nginx-copy1m")
		if !ok || !ok1 || !ok2 {
			continue
		}
		best := n1
		if n2.median() > n1.median() {
			best = n2
		}
		ratioT(fmt.Sprintf("%s: GB/s vs faster nginx", w.id), rc, best, true, true, false, true, 0.95, best.Server)
		ratioT(fmt.Sprintf("%s: server CPU s/GiB vs that nginx", w.id), rc, best, true, true, true, false, 1.5, best.Server)
	}
	// 3.
	for _, m := range []string{"GET", "HEAD"} {
		ng, nok := get("3", "static file "+m, "nginx-sendfile")
		for _, c := range []struct {
			by         string
			dist, ngin float64
		}{{"tag", 25, 0.4}, {"digest", 3, 0.5}} {
			cas := "by " + c.by + " " + m
			rc, rok := get("3", cas, "regcache")
			d, dok := get("3", cas, "distribution")
			ratioT("3: "+cas+" req/s vs Distribution", rc, d, rok, dok, false, true, c.dist, "distribution")
			ratioT("3: "+cas+" req/s vs nginx static", rc, ng, rok, nok, false, true, c.ngin, "nginx")
		}
	}
	// 4.
	cas4 := fmt.Sprintf("1 cold pull of %d MiB", e.big.size>>20)
	direct, dok := get("4", cas4, "direct")
	rc4, rok := get("4", cas4, "regcache")
	ratioT("4: cold pull time vs direct", rc4, direct, rok, dok, false, false, 1.05, "direct")
	for _, ref := range []struct{ server, name string }{
		{"distribution", "Distribution cold pull"},
		{"nginx-proxy", "floor: nginx proxy_pass, no check, no disk"},
		{"hash-forward", "floor: forward and SHA-256, no disk"},
	} {
		if r, ok := get("4", cas4, ref.server); ok && dok {
			out = append(out, target{name: "4: (" + ref.name + ", vs direct)", value: fmtNum(r.median()), ref: fmtNum(direct.median()) + " (direct)",
				ratio: fmt.Sprintf("%.2f×", r.median()/direct.median()), na: true})
		}
	}
	// 5.
	cas5 := fmt.Sprintf("%d concurrent cold pulls of %d MiB", e.fanout, e.big.size>>20)
	if ob, ok := get("5", cas5+": origin bytes", "regcache"); ok {
		out = append(out, target{name: "5: origin bytes / image size", value: fmt.Sprintf("%.3f", ob.median()), ref: "1.00", limit: "= 1.00", ok: ob.median() < 1.005})
	}
	if ob, ok := get("5", cas5+": origin bytes", "distribution"); ok {
		out = append(out, target{name: "5: (Distribution origin bytes / image size)", value: fmt.Sprintf("%.3f", ob.median()), na: true})
	}
	rc5, r5ok := get("5", cas5, "regcache")
	d5, d5ok := get("5", cas5, "direct")
	ratioT("5: wall time vs same 16 pulls direct", rc5, d5, r5ok, d5ok, false, false, 1.0, "direct")
	for _, s := range []string{"regcache", "distribution", "direct"} {
		a, aok := get("5", cas5, s)
		one, ook := get("4", cas4, s)
		if aok && ook {
			out = append(out, target{name: "5: (" + s + " 16 pulls wall / 1 cold pull)", value: fmtNum(a.median()), ref: fmtNum(one.median()),
				ratio: fmt.Sprintf("%.2f×", a.median()/one.median()), na: true})
		}
	}
	// 6.
	if r, ok := get("6", "peak RSS, 16 streams (workload 2)", "regcache"); ok && len(r.Values) > 0 {
		out = append(out, target{name: "6: peak RSS at 16 streams (MiB)", value: fmtNum(r.median()), limit: "≤ 48", ok: r.median() <= 48})
	}
	if r, ok := get("6", "RSS, 1000 idle keep-alive conns", "regcache"); ok {
		out = append(out, target{name: "6: peak RSS with 1,000 idle conns (MiB)", value: fmtNum(r.median()), limit: "≤ 128", ok: r.median() <= 128})
	}
	// 7.
	if len(e.tagCounts) > 1 {
		lab := func(n int) string {
			if n >= 1_000_000 {
				return fmt.Sprintf("%dM tags", n/1_000_000)
			}
			return fmt.Sprintf("%dk tags", n/1000)
		}
		lo, hi := e.tagCounts[0], e.tagCounts[len(e.tagCounts)-1]
		a, aok := get("7", "random tag GET, "+lab(hi), "regcache")
		b, bok := get("7", "random tag GET, "+lab(lo), "regcache")
		ratioT("7: req/s at "+lab(hi)+" vs "+lab(lo), a, b, aok, bok, false, true, 0.8, lab(lo))
		if r, ok := get("7", "start to first served tag, "+lab(hi), "regcache"); ok {
			t := target{name: "7: start to first served request, " + lab(hi) + " (s)", value: fmtNum(r.median()), limit: "≤ 2", ok: r.median() <= 2}
			out = append(out, t)
		}
	}
	// Issue 9. Its cases run interleaved, repetition by repetition, so the
	// ratio is the median of the per-repetition ratios: load from other
	// work that comes and goes falls on both sides of each one.
	paired := func(name string, a, b row, aok, bok bool, limit float64, refName string) {
		if !aok || !bok || len(a.Values) != len(b.Values) {
			return
		}
		var rs []float64
		for i := range a.Values {
			if b.Values[i] > 0 {
				rs = append(rs, a.Values[i]/b.Values[i])
			}
		}
		r := median(rs)
		out = append(out, target{name: name, value: fmtNum(a.median()), ref: fmtNum(b.median()) + " (" + refName + ")",
			ratio: fmt.Sprintf("%.2f×", r), limit: fmt.Sprintf("≥ %.2f×", limit), ok: r >= limit})
	}
	casB := fmt.Sprintf("%d MiB blob, 1 stream", e.blob.size>>20)
	direct9, dok9 := get("s3-blob", casB, "direct from the object store")
	prox9, pok9 := get("s3-blob", casB, "regcache on S3, proxied")
	redir9, rok9 := get("s3-blob", casB, "regcache on S3, redirect")
	fs9, fok9 := get("s3-blob", casB, "(regcache on the filesystem)")
	paired("s3-blob: proxied GB/s vs direct S3 GET", prox9, direct9, pok9, dok9, 0.8, "direct")
	paired("s3-blob: redirect GB/s vs direct S3 GET", redir9, direct9, rok9, dok9, 0.95, "direct")
	if pok9 && fok9 {
		out = append(out, target{name: "s3-blob: (regcache CPU s/GiB, from S3 vs from its filesystem)", value: fmtNum(prox9.cpuPer()), ref: fmtNum(fs9.cpuPer()) + " (filesystem)",
			ratio: fmt.Sprintf("%.2f×", prox9.cpuPer()/fs9.cpuPer()), na: true})
	}
	for _, cas := range []string{"by tag GET", "by digest GET"} {
		s3r, sok := get("s3-manifest", cas, "regcache on S3")
		fsr, fok := get("s3-manifest", cas, "regcache, filesystem")
		paired("s3-manifest: "+cas+" req/s, S3 vs filesystem store", s3r, fsr, sok, fok, 0.9, "filesystem")
		if sok && fok {
			out = append(out, target{name: "s3-manifest: (" + cas + " regcache CPU ms/kreq, S3 vs filesystem)", value: fmtNum(s3r.cpuPer()), ref: fmtNum(fsr.cpuPer()) + " (filesystem)",
				ratio: fmt.Sprintf("%.2f×", s3r.cpuPer()/fsr.cpuPer()), na: true})
		}
	}
	casR := fmt.Sprintf("%d × %d MiB blob, concurrent", replicaStreams, e.blob.size>>20)
	if one, ok := get("s3-replicas", casR, "1 regcache on S3"); ok {
		for _, n := range []string{"2", "3"} {
			if r, ok := get("s3-replicas", casR, n+" regcache on S3"); ok && one.median() > 0 {
				out = append(out, target{name: "s3-replicas: " + n + " replicas vs 1 (aggregate GB/s)", value: fmtNum(r.median()), ref: fmtNum(one.median()) + " (1 replica)",
					ratio: fmt.Sprintf("%.2f×", r.median()/one.median()), na: true})
			}
		}
		if d, ok := get("s3-replicas", casR, "direct from the object store"); ok && d.median() > 0 {
			out = append(out, target{name: "s3-replicas: 1 replica vs the same GETs direct", value: fmtNum(one.median()), ref: fmtNum(d.median()) + " (direct)",
				ratio: fmt.Sprintf("%.2f×", one.median()/d.median()), na: true})
		}
	}
	return out
}
