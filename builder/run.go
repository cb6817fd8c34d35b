package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/executor"
)

// run executes a RUN instruction in the sandbox on a new snapshot.
func (b *build) run(ctx context.Context, s *stage, c *instructions.RunCommand) error {
	if s.platform.Architecture != runtime.GOARCH {
		// A stage of another platform may be copied from, not run in.
		return fmt.Errorf("the stage's platform is %s and this host runs %s: rbuild does not emulate other architectures", s.platform.String(), runtime.GOARCH)
	}
	network := b.opts.Network
	switch instructions.GetNetwork(c) {
	case instructions.NetworkNone:
		network = "none"
	case instructions.NetworkHost:
		network = "host"
	}
	if network == "" || network == "default" {
		network = "host"
	}
	cfg := &s.cfg.Config
	args := c.CmdLine
	var script *heredocScript
	if len(c.Files) > 0 {
		var err error
		if args, script, err = heredocArgs(c); err != nil {
			return err
		}
	}
	if c.PrependShell {
		args = withShell(cfg.Shell, args)
	}
	mountKey, prepareMounts, err := b.runMounts(ctx, s, c)
	if err != nil {
		return err
	}
	env := s.env()
	wd := cfg.WorkingDir
	if wd == "" {
		wd = "/"
	}
	kb := cache.NewKey(s.key).
		AddList("run", args).
		AddList("env", env).
		Add("user", cfg.User).
		Add("workdir", wd).
		Add("network", network).
		AddList("mounts", mountKey)
	if script != nil {
		kb.Add("heredoc", script.name+"\x00"+script.data)
	}
	createdBy := "RUN " + runCommandString(args, s.argEnv()) + " # buildkit"
	return b.step(ctx, s, kb.Key(), createdBy, func(rootfs string) error {
		mounts, secretEnv, release, err := prepareMounts()
		if err != nil {
			return err
		}
		defer release()
		out := b.log.stepOutput(s.step, s.step+" "+c.String(), "  "+s.label()+"| ")
		defer out.Flush()
		spec := executor.RunSpec{
			Rootfs:    rootfs,
			Args:      args,
			Env:       append(append([]string(nil), env...), secretEnv...),
			Mounts:    mounts,
			Dir:       wd,
			User:      cfg.User,
			Network:   network,
			Isolation: b.opts.Isolation,
			StateDir:  b.stateDir,
			Stdout:    out,
			Stderr:    out,
		}
		if script != nil {
			dir, err := os.MkdirTemp(b.stateDir, "heredoc-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			if err := os.WriteFile(filepath.Join(dir, script.name), []byte(script.data), 0o755); err != nil {
				return err
			}
			spec.Mounts = append(spec.Mounts, executor.Mount{Source: dir, Target: "/dev/pipes", ReadOnly: true})
		}
		if err := executor.Run(ctx, spec); err != nil {
			out.Fail()
			return fmt.Errorf("%s: %w", shortCmd(args), err)
		}
		return nil
	})
}

// heredocScript is a heredoc RUN with a #! line: BuildKit runs it as a
// file, mounted under /dev/pipes.
type heredocScript struct {
	name, data string
}

// heredocArgs turns a heredoc RUN into the command BuildKit would run.
func heredocArgs(c *instructions.RunCommand) ([]string, *heredocScript, error) {
	args := c.CmdLine
	if len(args) != 1 || !c.PrependShell {
		return nil, nil, fmt.Errorf("parsing produced an invalid run command: %v", args)
	}
	if h := parser.MustParseHeredoc(args[0]); h != nil {
		data := c.Files[0].Data
		if c.Files[0].Chomp {
			data = parser.ChompHeredocContent(data)
		}
		if strings.HasPrefix(data, "#!") {
			s := &heredocScript{name: c.Files[0].Name, data: data}
			// Exec form: the script runs itself.
			c.PrependShell = false
			return []string{"/dev/pipes/" + s.name}, s, nil
		}
		return []string{data}, nil, nil
	}
	var sb strings.Builder
	sb.WriteString(args[0])
	for _, f := range c.Files {
		sb.WriteByte('\n')
		sb.WriteString(f.Data)
		sb.WriteString(f.Name)
	}
	return []string{sb.String()}, nil, nil
}

// runCommandString is BuildKit's history text for RUN: build args first,
// as "|N K=V ...".
func runCommandString(args []string, buildArgs []string) string {
	if len(buildArgs) == 0 {
		return strings.Join(args, " ")
	}
	return strings.Join(append(append([]string{fmt.Sprintf("|%d", len(buildArgs))}, buildArgs...), args...), " ")
}

// shortCmd abbreviates a command for an error message.
func shortCmd(args []string) string {
	s := strings.Join(args, " ")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return fmt.Sprintf("process %q did not complete successfully", s)
}
