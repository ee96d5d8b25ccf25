package main

import "github.com/spf13/cobra"

// toolCommands returns the CI integration commands (setup, scan, rewrite).
func toolCommands() []*cobra.Command {
	return []*cobra.Command{newScanCmd(), newRewriteCmd(), newSetupCmd()}
}
