// Package testhub provides the upstream side of regcache's tests: a real
// distribution registry process (StartRegistry), helpers that seed it with
// images and multi-arch indexes (PushImage, PushIndex), and a fake Docker Hub
// front (NewHub) that sits in front of that registry and reproduces the parts
// of Docker Hub that regcache has to cope with: Bearer token auth, pull rate
// limits and their headers, blob redirects to a CDN host, and injectable
// faults, delays and throttling.
//
// Storage is never faked: every manifest and blob the hub serves comes from the
// real registry, so digests, media types and headers are exactly what a real
// registry produces. Everything listens on loopback only.
package testhub
