// Package rewrite changes the image references found by package refscan so
// that pulls go through a regcache server or the ECR Public mirror of the
// Docker Official Images.
//
// Only the exact bytes of each reference are replaced; everything else in
// the file (formatting, comments, anchors, digests) is left as it was.
// References that cannot be rewritten safely are reported, never guessed.
package rewrite
