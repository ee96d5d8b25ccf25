// Package testhub provides the upstream side of regcache's tests: a real
// distribution registry process (StartRegistry), helpers that seed it with
// images and multi-arch indexes (PushImage, PushIndex), and a fake Docker Hub
// front (NewHub) that sits in front of that registry and reproduces the parts
// of Docker Hub that regcache has to cope with: Bearer token auth, pull rate
// limits and their headers, blob redirects to a CDN host, and injectable
// faults (errors, dropped connections, damaged bodies, and a hang: a request
// read and never answered), delays (a slow origin) and throttling.
//
// Storage is never faked: every manifest and blob the hub serves comes from the
// real registry, so digests, media types and headers are exactly what a real
// registry produces. Everything listens on loopback only.
//
// Typical use:
//
//	reg := testhub.StartRegistry(t)
//	img := reg.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
//	hub := testhub.NewHub(t, reg, testhub.Options{AnonymousLimit: 10})
//	// point the code under test at hub.URL, pull library/alpine:3.19, then
//	if got := hub.Counts().ManifestGETs; got != 1 { ... }
//	hub.SetFault(testhub.Fault500) // upstream outage from now on
//	hub.SetFault(testhub.FaultHang) // or: connections accepted, never answered
//	hub.SetFault(testhub.FaultNone); hub.Release() // recovered; held requests answered
//
// Counters and transfers are updated before the client can observe the
// response they describe, so checking them right after a pull is not racy.
//
// Note for go-containerregistry based clients: since v0.22 its remote package
// refuses redirects from one host to another literal loopback or private IP,
// which includes the default CDN on 127.0.0.2. Set Options.CDNHostname to
// "localhost" to redirect to a host name instead.
package testhub
