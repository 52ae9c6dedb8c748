// Package version holds the build's version, set by the linker.
package version

import "runtime"

// Version is set at build time with -ldflags "-X .../internal/version.Version=...".
var Version = "dev"

// String is the version line both binaries print.
func String() string {
	return "flynn " + Version + " (" + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")"
}
