// The Go peer: net/http with http.FileServer, one OS thread of Go code (GOMAXPROCS=1, set by
// the lab in the environment). Built by the lab with `go build` into its cache directory;
// standard library only, so no module file is needed.
//
// Routes: "/" Hello, World!; "/json" the payload (net/http has no response compression, so
// it is sent as is); "/files/" http.FileServer over the data directory (ranges, sendfile via
// io.Copy -> (*TCPConn).ReadFrom).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	data := flag.String("data", ".", "data directory")
	flag.Parse()

	hello := []byte("Hello, World!")
	payload, err := os.ReadFile(filepath.Join(*data, "payload.json"))
	if err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write(hello)
	})
	mux.HandleFunc("/json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(payload)
	})
	mux.Handle("/files/", http.FileServer(http.Dir(*data)))

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())
	log.Fatal(http.Serve(ln, mux))
}
