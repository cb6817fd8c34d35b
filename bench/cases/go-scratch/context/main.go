// Command report prints a small JSON document as text.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type item struct {
	Name  string  `json:"name"`
	Price float64 `json:"price"`
}

// version is printed first; the benchmark's one-file change extends it,
// so that the binary really changes.
var version = "1"

const doc = `[{"name":"apple","price":1.5},{"name":"pear","price":2.25}]`

var tmpl = template.Must(template.New("r").Parse("{{range .}}{{.Name}}: {{printf \"%.2f\" .Price}}\n{{end}}"))

func main() {
	fmt.Println("report", version)
	var items []item
	if err := json.Unmarshal([]byte(doc), &items); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := tmpl.Execute(os.Stdout, items); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
