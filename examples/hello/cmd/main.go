// Command hello prints the files named on its command line: the program of
// rbuild's example image.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	for _, p := range os.Args[1:] {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_, _ = io.Copy(os.Stdout, f)
		f.Close()
	}
}
