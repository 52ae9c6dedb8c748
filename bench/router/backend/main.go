// Command backend is the tiny HTTP server the router benchmark proxies to:
// every request gets a 2-byte body (or -size bytes).
package main

import (
	"flag"
	"log"
	"net/http"
	"strconv"
	"strings"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18081", "listen address")
	size := flag.Int("size", 2, "response body size in bytes")
	flag.Parse()
	body := []byte(strings.Repeat("x", *size))
	if *size == 2 {
		body = []byte("ok")
	}
	n := strconv.Itoa(len(body))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain"}
		w.Header()["Content-Length"] = []string{n}
		w.Write(body)
	})
	log.Fatal(http.ListenAndServe(*addr, h))
}
