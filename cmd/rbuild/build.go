package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/rbuild/rbuild/builder"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/output"
	"github.com/rbuild/rbuild/registry"
	"github.com/rbuild/rbuild/snapshot"
	"github.com/spf13/cobra"
	"go.podman.io/storage/pkg/unshare"
)

type buildFlags struct {
	tags               []string
	file               string
	buildArgs          []string
	target             string
	labels             []string
	platform           string
	noCache            bool
	pull               bool
	network            string
	quiet              bool
	progress           string
	push               bool
	outputs            []string
	iidfile            string
	digestfile         string
	insecureRegistries []string
	root               string
	driver             string
	compression        string
	compressionLevel   int
	secrets            []string
	cacheFrom          []string
	cacheTo            []string
	cacheRepo          string
	noCacheFilter      []string
	reproducible       bool
	isolation          string
}

func newRootCommand() *cobra.Command {
	var f buildFlags
	root := &cobra.Command{
		Use:           "rbuild [build] [flags] CONTEXT",
		Short:         "Build OCI images from Dockerfiles, with no daemon and no root",
		Args:          cobra.ExactArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, args []string) error { return runBuild(cmd, &f, args[0]) },
	}
	addBuildFlags(root, &f)
	var bf buildFlags
	build := &cobra.Command{
		Use:   "build [flags] CONTEXT",
		Short: "Build an image from a Dockerfile",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return runBuild(cmd, &bf, args[0]) },
	}
	addBuildFlags(build, &bf)
	root.AddCommand(build, newVersionCommand())
	return root
}

func addBuildFlags(cmd *cobra.Command, f *buildFlags) {
	fl := cmd.Flags()
	fl.StringArrayVarP(&f.tags, "tag", "t", nil, "name the image (repeatable); a name with a registry host is pushed")
	fl.StringVarP(&f.file, "file", "f", "", "Dockerfile path (default CONTEXT/Dockerfile; - reads standard input)")
	fl.StringArrayVar(&f.buildArgs, "build-arg", nil, "set a build arg KEY=VALUE (KEY alone takes it from the environment)")
	fl.StringVar(&f.target, "target", "", "build this stage")
	fl.StringArrayVar(&f.labels, "label", nil, "add a label KEY=VALUE to the image")
	fl.StringVar(&f.platform, "platform", "", "target platform (os/arch[/variant])")
	fl.BoolVar(&f.noCache, "no-cache", false, "do not use the cache")
	fl.StringArrayVar(&f.noCacheFilter, "no-cache-filter", nil, "run these stages without cache lookups (repeatable)")
	fl.StringArrayVar(&f.cacheFrom, "cache-from", nil, "import a shared cache: type=registry,ref=REG/REPO[:TAG] | type=local,src=DIR | REF (repeatable)")
	fl.StringArrayVar(&f.cacheTo, "cache-to", nil, "export the cache: type=registry,ref=REG/REPO[:TAG][,mode=min|max] | type=local,dest=DIR[,mode=...]")
	fl.StringVar(&f.cacheRepo, "cache-repo", "", "shorthand for --cache-from and --cache-to type=registry,ref=REPO,mode=max")
	fl.BoolVar(&f.pull, "pull", false, "always resolve base images from their registry")
	fl.StringVar(&f.network, "network", "host", "network for RUN steps: host or none")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "print only the image ID")
	fl.StringVar(&f.progress, "progress", "auto", "progress output: auto, plain or tty")
	fl.BoolVar(&f.push, "push", true, "push tags that name a registry")
	fl.StringArrayVar(&f.outputs, "output", nil, "also write the image: type=oci,dest=DIR|FILE.tar or type=docker,dest=FILE.tar")
	fl.StringVar(&f.iidfile, "iidfile", "", "write the image ID to this file")
	fl.StringVar(&f.digestfile, "digestfile", "", "write the manifest digest to this file")
	fl.StringArrayVar(&f.insecureRegistries, "insecure-registry", nil, "reach this registry over plain HTTP (repeatable)")
	fl.StringVar(&f.root, "root", "", "state directory (default $RBUILD_ROOT, /var/lib/rbuild for root, $XDG_DATA_HOME/rbuild otherwise)")
	fl.StringVar(&f.driver, "storage-driver", "", "layer store driver: overlay or vfs (default: overlay where it mounts)")
	fl.StringVar(&f.isolation, "isolation", "auto", "how RUN steps are isolated: auto, userns or chroot")
	fl.BoolVar(&f.reproducible, "reproducible", false, "reproducible image: times from SOURCE_DATE_EPOCH (default 0), newer mtimes clamped")
	fl.StringArrayVar(&f.secrets, "secret", nil, "a secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR")
	fl.StringVar(&f.compression, "compression", "gzip", "layer compression: gzip or zstd")
	fl.IntVar(&f.compressionLevel, "compression-level", 0, "compression level (0: the algorithm's default)")
}

func runBuild(cmd *cobra.Command, f *buildFlags, contextDir string) error {
	// First of all: an unprivileged rbuild continues in a child process,
	// which must still find standard input unread (-f -).
	isolation, err := chooseIsolation(f.isolation, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	switch f.network {
	case "host", "none", "default":
	default:
		return fmt.Errorf("--network %q: want host or none", f.network)
	}
	switch f.progress {
	case "auto", "plain", "tty":
	default:
		return fmt.Errorf("--progress %q: want auto, plain or tty", f.progress)
	}
	opts := builder.Options{
		ContextDir:         contextDir,
		Dockerfile:         f.file,
		Target:             f.target,
		Platform:           f.platform,
		NoCache:            f.noCache,
		Pull:               f.pull,
		Network:            f.network,
		Driver:             f.driver,
		InsecureRegistries: f.insecureRegistries,
		Compression:        snapshot.Compression{Algorithm: f.compression, Level: f.compressionLevel},
		Progress:           cmd.ErrOrStderr(),
	}
	opts.ProgressTTY, opts.ProgressWidth = progressMode(f.progress, cmd.ErrOrStderr())
	if f.quiet {
		opts.Progress = io.Discard
		opts.Warnings = cmd.ErrOrStderr()
		opts.ProgressTTY = false
	}
	opts.Isolation = isolation
	if opts.BuildArgs, err = keyValues(f.buildArgs, "--build-arg", true); err != nil {
		return err
	}
	if opts.Labels, err = keyValues(f.labels, "--label", false); err != nil {
		return err
	}
	if opts.Secrets, err = parseSecrets(f.secrets); err != nil {
		return err
	}
	if err := cacheOptions(f, &opts); err != nil {
		return err
	}
	opts.NoCacheFilter = f.noCacheFilter
	opts.Reproducible = f.reproducible
	opts.SourceDateEpoch = os.Getenv("SOURCE_DATE_EPOCH")
	if f.file == "-" {
		if opts.DockerfileContent, err = io.ReadAll(cmd.InOrStdin()); err != nil {
			return fmt.Errorf("reading Dockerfile from standard input: %w", err)
		}
	}
	if opts.Root, err = stateDir(f.root); err != nil {
		return err
	}
	if err := prepareRuntimeDir(opts.Root); err != nil {
		return err
	}
	reg := registry.New(registry.Options{Insecure: f.insecureRegistries})
	if opts.Outputs, err = outputs(f, reg, opts.Root); err != nil {
		return err
	}
	res, err := builder.Build(cmd.Context(), opts)
	if err != nil {
		return err
	}
	if f.iidfile != "" {
		if err := os.WriteFile(f.iidfile, []byte(res.ImageID.String()), 0o644); err != nil {
			return err
		}
	}
	if f.digestfile != "" {
		if err := os.WriteFile(f.digestfile, []byte(res.Digest.String()), 0o644); err != nil {
			return err
		}
	}
	if f.quiet {
		fmt.Fprintln(cmd.OutOrStdout(), res.ImageID)
	} else {
		fmt.Fprintf(cmd.ErrOrStderr(), "image %s (manifest %s)\n", res.ImageID, res.Digest)
	}
	return nil
}

// keyValues parses KEY=VALUE flags; with fromEnv, a bare KEY takes its
// value from the environment (and is skipped when unset), as docker build.
func keyValues(list []string, flag string, fromEnv bool) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", flag, kv)
		}
		if !ok {
			if !fromEnv {
				out[k] = ""
				continue
			}
			env, set := os.LookupEnv(k)
			if !set {
				continue
			}
			v = env
		}
		out[k] = v
	}
	return out, nil
}

// stateDir picks the state directory: the flag, $RBUILD_ROOT,
// /var/lib/rbuild for root, the XDG data directory otherwise.
func stateDir(flag string) (string, error) {
	dir := flag
	if dir == "" {
		dir = os.Getenv("RBUILD_ROOT")
	}
	if dir == "" {
		if os.Geteuid() == 0 && !unshare.IsRootless() {
			dir = "/var/lib/rbuild"
		} else if x := os.Getenv("XDG_DATA_HOME"); x != "" {
			dir = filepath.Join(x, "rbuild")
		} else if h, err := os.UserHomeDir(); err == nil {
			dir = filepath.Join(h, ".local", "share", "rbuild")
		} else {
			return "", errors.New("no state directory: set --root or RBUILD_ROOT")
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w (set --root or RBUILD_ROOT to a writable directory, e.g. an emptyDir volume)", err)
	}
	return abs, nil
}

// outputs turns -t, --push and --output into the build's outputs.
func outputs(f *buildFlags, reg *registry.Client, root string) ([]output.Output, error) {
	var outs []output.Output
	var local []string
	for _, t := range f.tags {
		ref, err := reg.ParseReference(t)
		if err != nil {
			return nil, fmt.Errorf("-t %q: %w", t, err)
		}
		if f.push && registry.HasRegistryHost(t) {
			outs = append(outs, &output.Registry{Client: reg, Ref: ref})
			continue
		}
		local = append(local, ref.Name())
	}
	if len(local) > 0 {
		outs = append(outs, &output.OCILayout{Dest: snapshot.ImageDir(root), Tags: local})
	}
	for _, o := range f.outputs {
		kv, err := keyValues(strings.Split(o, ","), "--output", false)
		if err != nil {
			return nil, err
		}
		dest := kv["dest"]
		if dest == "" {
			return nil, fmt.Errorf("--output %q: dest= is required", o)
		}
		switch kv["type"] {
		case "oci":
			outs = append(outs, &output.OCILayout{Dest: dest, Tags: f.tags})
		case "docker":
			outs = append(outs, &output.DockerArchive{Dest: dest, Tags: f.tags})
		default:
			return nil, fmt.Errorf("--output %q: type must be oci or docker", o)
		}
	}
	return outs, nil
}

// parseSecrets reads --secret values as docker buildx does:
// id=ID[,src=FILE|,env=VAR][,type=file|env]; with neither src nor env, the
// environment variable named ID is used if set, else the file named ID.
func parseSecrets(list []string) ([]builder.Secret, error) {
	var out []builder.Secret
	for _, v := range list {
		kv, err := keyValues(strings.Split(v, ","), "--secret", false)
		if err != nil {
			return nil, err
		}
		sec := builder.Secret{ID: kv["id"], Src: kv["src"], Env: kv["env"]}
		if sec.Src == "" {
			sec.Src = kv["source"]
		}
		if sec.ID == "" {
			return nil, fmt.Errorf("--secret %q: id= is required", v)
		}
		switch kv["type"] {
		case "env":
			if sec.Env == "" {
				sec.Env, sec.Src = sec.Src, ""
			}
		case "", "file":
		default:
			return nil, fmt.Errorf("--secret %q: type must be file or env", v)
		}
		if sec.Src == "" && sec.Env == "" {
			if _, ok := os.LookupEnv(sec.ID); ok {
				sec.Env = sec.ID
			} else {
				sec.Src = sec.ID
			}
		}
		out = append(out, sec)
	}
	return out, nil
}

// cacheOptions turns --cache-from, --cache-to and --cache-repo into cache
// stores, as docker buildx spells them.
func cacheOptions(f *buildFlags, opts *builder.Options) error {
	reg := registry.New(registry.Options{Insecure: f.insecureRegistries})
	from, to := f.cacheFrom, f.cacheTo
	if f.cacheRepo != "" {
		from = append(from, "type=registry,ref="+f.cacheRepo)
		to = append(to, "type=registry,ref="+f.cacheRepo+",mode=max")
	}
	for _, v := range from {
		st, _, err := cacheStore(reg, v, "src")
		if err != nil {
			return fmt.Errorf("--cache-from %q: %w", v, err)
		}
		opts.CacheFrom = append(opts.CacheFrom, st)
	}
	for _, v := range to {
		st, mode, err := cacheStore(reg, v, "dest")
		if err != nil {
			return fmt.Errorf("--cache-to %q: %w", v, err)
		}
		opts.CacheTo = append(opts.CacheTo, builder.CacheExport{Store: st, Mode: mode})
	}
	return nil
}

func cacheStore(reg *registry.Client, v, dirKey string) (cache.Store, string, error) {
	if !strings.Contains(v, "=") {
		v = "type=registry,ref=" + v
	}
	kv, err := keyValues(strings.Split(v, ","), "cache", false)
	if err != nil {
		return nil, "", err
	}
	mode := kv["mode"]
	switch mode {
	case "":
		mode = "min"
	case "min", "max":
	default:
		return nil, "", fmt.Errorf("mode must be min or max")
	}
	switch kv["type"] {
	case "registry":
		if kv["ref"] == "" {
			return nil, "", errors.New("ref= is required")
		}
		ref, err := reg.ParseReference(kv["ref"])
		if err != nil {
			return nil, "", err
		}
		if _, isTag := ref.(name.Tag); isTag && !strings.Contains(kv["ref"][strings.LastIndex(kv["ref"], "/")+1:], ":") {
			// A bare repository gets rbuild's cache tag, not "latest", so
			// an image and its cache can share a repository.
			ref = ref.Context().Tag("buildcache")
		}
		return &cache.Registry{Ref: ref, Options: reg.RemoteOptions()}, mode, nil
	case "local":
		dir := kv[dirKey]
		if dir == "" {
			return nil, "", fmt.Errorf("%s= is required", dirKey)
		}
		return &cache.Dir{Path: dir}, mode, nil
	default:
		return nil, "", fmt.Errorf("type must be registry or local")
	}
}
