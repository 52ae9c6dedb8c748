// Command goweb is the Go sample app: it answers HTTP on $PORT with a
// greeting and a UUID from its module dependency, the job that answered
// and the APP_VALUE it was started with.
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
	job, value := os.Getenv("FLYNN_JOB_ID"), os.Getenv("APP_VALUE")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the go app %s\njob=%s\nvalue=%s\n", uuid.NewString(), job, value)
	})
	fmt.Printf("web starting on port %s\n", port)
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
