// Command server is a sample app for the Go buildpack's Heroku settings:
// it answers with what the build put in it.
package main

// #include "greeting.h"
import "C"

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
)

// version is set by the linker (GO_LINKER_SYMBOL=main.version).
var version = "unset"

// tags is "heroku" when built with the heroku build tag.
var tags = "none"

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the goheroku app: go=%s version=%s tags=%s c=%s\n", runtime.Version(), version, tags, C.GoString(C.greeting()))
	})
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
