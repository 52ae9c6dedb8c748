package api

// SlugBuildResult is what `flynn-host slugbuilder` reports after a build:
// the slug it wrote and the process types the release should run.
type SlugBuildResult struct {
	// ProcessTypes maps a process type to its command: the Procfile's
	// types, plus the buildpack's default_process_types for types the
	// Procfile lacks. Each runs as `flynn-host slugrunner start <type>`.
	ProcessTypes map[string]string `json:"process_types"`
	// Buildpack is the display name of the buildpack(s) that built the app.
	Buildpack string `json:"buildpack"`
	// SHA256 and Size describe the slug (a tar.gz of /app): without
	// Runtime, all of it; with Runtime, all but the runtime layer.
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Runtime, when the slug has one, is its runtime layer: the
	// directories the buildpacks installed runtimes, tools and
	// dependencies into (the top-level hidden directories the build
	// made, such as .node, and node_modules), a layer of their own below
	// the rest so that a push that leaves them as they were reuses the
	// last release's layer instead of packing, checking and downloading
	// them again.
	Runtime *SlugLayerResult `json:"runtime,omitempty"`
	// SourceVersion is the commit that was built, when known.
	SourceVersion string `json:"source_version,omitempty"`
	// GoToolchain is the Go toolchain a Go build installed (go1.22.12):
	// gitreceive makes the platform's shared build of it and its standard
	// library when there is none yet (see internal/gitreceive/gostd.go).
	GoToolchain string `json:"go_toolchain,omitempty"`
	// DurationMS is how long the whole build took.
	DurationMS int64 `json:"duration_ms"`
	// Phases says where the build's time went, in the order the phases
	// first ran; a phase that did not run is absent.
	Phases []BuildPhase `json:"phases,omitempty"`
}

// SlugLayerResult describes a slug's runtime layer.
type SlugLayerResult struct {
	// Digest is the sha256 of the layer's uncompressed tar, which the
	// same files always give (their directories' and links' times
	// aside): it says whether the layer changed since the last build.
	Digest string `json:"digest"`
	// Reused says the layer is the one of the digest the build was given
	// (the last release's), and was not written again. Else SHA256 and
	// Size describe the tar.gz written.
	Reused bool   `json:"reused,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size,omitempty"`
}

// BuildPhase is the time a build spent in one phase: "fetch" (downloading
// and unpacking the source), "cache" (restoring and saving the build
// cache), "compile" (selecting and running the buildpacks) or "slug"
// (packing the build directory and uploading it; the two are streamed
// together, so they are one phase).
type BuildPhase struct {
	Name string `json:"name"`
	MS   int64  `json:"ms"`
}
