// Command goweb is the Go sample app: it answers HTTP on $PORT with a
// greeting and a UUID from its module dependency, the job that answered,
// the APP_VALUE it was started with and its DYNO. Its Procfile names the
// binary bare (web: goweb), as Heroku Go apps do: the Go buildpack
// installs it in the slug's bin, which is on $PATH.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"

	"github.com/google/uuid"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	job, value, dyno := os.Getenv("FLYNN_JOB_ID"), os.Getenv("APP_VALUE"), os.Getenv("DYNO")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the go app %s\njob=%s\nvalue=%s\ndyno=%s\n", uuid.NewString(), job, value, dyno)
	})
	fmt.Printf("web starting on port %s\n", port)
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
