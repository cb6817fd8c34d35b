// Command server serves a small item store over HTTP.
package main

import (
	"flag"
	"log"
	"net/http"

	"example.com/service/internal/store"
	"example.com/service/internal/web"
)

func main() {
	addr := flag.String("addr", ":8080", "listen address")
	flag.Parse()
	log.Printf("store format %s", store.Version)
	s := store.New()
	s.Put(store.Item{ID: "1", Name: "apple"})
	log.Fatal(http.ListenAndServe(*addr, web.Handler(s)))
}
