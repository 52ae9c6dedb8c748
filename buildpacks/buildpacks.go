// Package buildpacks holds the buildpacks that ship with Flynn (Heroku
// buildpack API v2: bin/detect, bin/compile, bin/release), embedded into
// flynn-host so a build job needs nothing but the stack and the binary.
package buildpacks

import "embed"

// FS holds one directory per buildpack.
//
//go:embed all:go all:ruby all:nodejs all:python all:static all:procfile
var FS embed.FS

// Order is the order in which the slugbuilder tries the shipped buildpacks'
// detect scripts; the first that accepts the app builds it. Ruby comes
// before Node.js and Node.js before Python, as on Heroku: a Rails app
// with a package.json is a Ruby app.
var Order = []string{"go", "ruby", "nodejs", "python", "static", "procfile"}
