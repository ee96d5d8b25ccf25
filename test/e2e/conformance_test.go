package e2e

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// conformanceTimeout bounds one run of the suite's pull workflow (about
// twenty requests).
const conformanceTimeout = 3 * time.Minute

// TestConformance runs the pull workflow of the OCI distribution-spec
// conformance suite (v1.1.1) through regcache, in both routing modes that
// name a repository in the path: bare (dockerd's registry-mirrors, routed to
// default_registry) and host-in-path (podman's mirrors). A pull-through
// cache takes no pushes, so the workflow runs read-only against an OCI
// image already on the upstream: the fake Docker Hub with credentials and
// CDN blob redirects, in front of a real Distribution registry. Every test
// of the workflow must pass; each mode starts with an empty cache.
func TestConformance(t *testing.T) {
	if conformanceBuild.err != nil {
		t.Fatal(conformanceBuild.err)
	}
	reg := testhub.StartRegistry(t)
	img := reg.PushImage(t, "library/conf", "v1", testhub.ImageOptions{OCI: true})
	secret := randomSecret(t)
	hub := testhub.NewHub(t, reg, testhub.Options{Users: map[string]string{"ci-user": secret}, BlobRedirect: true})

	for _, mode := range []struct{ name, namespace string }{
		{"bare", "library/conf"},
		{"host-in-path", "docker.io/library/conf"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			w := newWorld(t)
			rc := startRegcache(t, w, regcacheConfig{upstreamURL: hub.URL, user: "ci-user", password: secret})
			report := w.mkdir("logs", "conformance")
			out, err := w.run(t.Context(), conformanceTimeout, w.baseEnv(
				"OCI_ROOT_URL="+rc.url(),
				"OCI_NAMESPACE="+mode.namespace,
				"OCI_TEST_PULL=1",
				"OCI_HIDE_SKIPPED_WORKFLOWS=1",
				// With these three set the suite pushes nothing: it
				// pulls what they name.
				"OCI_TAG_NAME="+img.Tag,
				"OCI_MANIFEST_DIGEST="+img.Digest.String(),
				"OCI_BLOB_DIGEST="+img.Config.String(),
				"OCI_REPORT_DIR="+report,
			), conformanceBuild.bin, "-test.v")
			// junit.xml says which spec tests failed and why; the exit
			// status only matters when it tells something else.
			if failed := checkPullWorkflow(t, filepath.Join(report, "junit.xml")); failed == 0 && err != nil {
				t.Errorf("the conformance suite failed (%v) though its report lists no failed test:\n%s", err, tailLines(out, 30))
			}
		})
	}
}

// junitSuites is the part of Ginkgo's JUnit report that the check reads.
type junitSuites struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitCase struct {
	Name   string `xml:"name,attr"`
	Status string `xml:"status,attr"`
	// Failure and Error hold the failed assertion and where it is.
	Failure *struct {
		Text string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct {
		Text string `xml:",chardata"`
	} `xml:"error"`
}

// checkPullWorkflow fails the test for every spec test of the Pull workflow
// in the report that did not pass. Only the workflow's Setup and Teardown,
// which push and delete, may be skipped: a skipped check is a failed one.
func checkPullWorkflow(t *testing.T, junitPath string) (failed int) {
	t.Helper()
	b, err := os.ReadFile(junitPath)
	if err != nil {
		t.Fatalf("the conformance suite wrote no report: %v (its output is in the logs)", err)
	}
	var r junitSuites
	if err := xml.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", junitPath, err)
	}
	const prefix = "OCI Distribution Conformance Tests Pull "
	var passed int
	var failures []string
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			name, ok := strings.CutPrefix(c.Name, prefix)
			if !ok {
				continue
			}
			switch {
			case c.Status == "passed":
				passed++
			case c.Status == "skipped" && (strings.HasPrefix(name, "Setup ") || strings.HasPrefix(name, "Teardown ")):
			default:
				failures = append(failures, fmt.Sprintf("%s: %s%s", c.Status, name, caseDetail(c)))
			}
		}
	}
	for _, f := range failures {
		t.Errorf("conformance: %s", f)
	}
	if passed == 0 && len(failures) == 0 {
		t.Errorf("%s lists no test of the Pull workflow", junitPath)
	}
	t.Logf("conformance pull workflow: %d passed, %d failed (report.html and junit.xml in %s)", passed, len(failures), filepath.Dir(junitPath))
	return len(failures)
}

// caseDetail is the start of a failed case's report: the assertion that
// failed and where, without the whole captured HTTP exchange.
func caseDetail(c junitCase) string {
	var msg string
	switch {
	case c.Failure != nil:
		msg = c.Failure.Text
	case c.Error != nil:
		msg = c.Error.Text
	}
	lines := strings.SplitN(strings.TrimSpace(msg), "\n", 13)
	return "\n\t" + strings.Join(lines[:min(12, len(lines))], "\n\t")
}
