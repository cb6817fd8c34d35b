// Package web serves the store as JSON and HTML.
package web

import (
	"encoding/json"
	"html/template"
	"net/http"

	"example.com/service/internal/store"
)

var page = template.Must(template.New("p").Parse(`<ul>{{range .}}<li>{{.Name}}</li>{{end}}</ul>`))

// Handler returns the service's routes.
func Handler(s *store.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/items.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.List())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_ = page.Execute(w, s.List())
	})
	return mux
}
