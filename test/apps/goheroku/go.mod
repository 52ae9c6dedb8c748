module flynn-test/goheroku

// What Heroku's Go buildpack reads from go.mod: the Go release (newer
// than the go line's) and the packages to install.
// +heroku goVersion go1.22
// +heroku install ./cmd/...

go 1.21
