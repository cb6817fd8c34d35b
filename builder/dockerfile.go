package builder

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// dockerfile is a parsed Dockerfile.
type dockerfile struct {
	// name is how messages refer to the file ("Dockerfile",
	// "build.Dockerfile").
	name     string
	stages   []instructions.Stage
	metaArgs []instructions.ArgCommand
	escape   rune
	warnings []string
}

// readDockerfile loads the Dockerfile named by opts.
func readDockerfile(opts *Options) ([]byte, string, error) {
	if opts.DockerfileContent != nil {
		n := opts.Dockerfile
		if n == "" || n == "-" {
			n = "Dockerfile"
		}
		return opts.DockerfileContent, filepath.Base(n), nil
	}
	path := opts.Dockerfile
	if path == "" {
		path = filepath.Join(opts.ContextDir, "Dockerfile")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("no Dockerfile: %s does not exist", path)
		}
		return nil, "", fmt.Errorf("reading Dockerfile: %w", err)
	}
	return data, filepath.Base(path), nil
}

// parseDockerfile parses with BuildKit's parser and instruction decoder, so
// quoting, continuation lines, heredocs and flags behave as in docker build.
func parseDockerfile(name string, data []byte) (*dockerfile, error) {
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, locate(name, err)
	}
	df := &dockerfile{name: name, escape: rune(res.EscapeToken)}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		df.warnings = append(df.warnings, fmt.Sprintf("%s:%d: %s", name, line, w.Short))
	}
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		df.warnings = append(df.warnings, fmt.Sprintf("%s:%d: %s: %s", name, line, rule, msg))
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return nil, locate(name, err)
	}
	if len(stages) == 0 {
		return nil, fmt.Errorf("%s: file with no instructions", name)
	}
	df.stages = stages
	df.metaArgs = metaArgs
	return df, nil
}

// locate prefixes an error with file:line when it carries a location.
func locate(name string, err error) error {
	var le *parser.LocationError
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		msg := le.Unwrap().Error()
		return fmt.Errorf("%s:%d: %s", name, le.Locations[0][0].Start.Line, msg)
	}
	var ue *instructions.UnknownInstructionError
	if errors.As(err, &ue) {
		return fmt.Errorf("%s:%d: unknown instruction: %s", name, ue.Line, strings.ToUpper(ue.Instruction))
	}
	return fmt.Errorf("%s: %w", name, err)
}

// stepError is an error of one instruction, printed as
// "Dockerfile:12: COPY: cause".
type stepError struct {
	file string
	line int
	inst string
	err  error
}

func (e *stepError) Error() string {
	return fmt.Sprintf("%s:%d: %s: %v", e.file, e.line, e.inst, e.err)
}

func (e *stepError) Unwrap() error { return e.err }
