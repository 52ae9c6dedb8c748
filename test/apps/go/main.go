// Command goweb is the Go sample app: it answers HTTP on $PORT with a
// greeting and a UUID from its module dependency.
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
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the go app %s\n", uuid.NewString())
	})
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
