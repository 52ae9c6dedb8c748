package hostcmd

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/slugbuilder"
	"github.com/flynnrebuilt/flynn/internal/slugrunner"
	"github.com/flynnrebuilt/flynn/internal/stack"
)

// The build side of the platform: `stack build`, and the entrypoints of
// build jobs (`slugbuilder`) and app jobs (`slugrunner`).

func newStackCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stack",
		Short: "Build the root filesystems build and app jobs run in",
	}
	var (
		out, mirror, packages string
		tar, busybox          bool
	)
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the default Debian stack with debootstrap (cached by package list)",
		Long: `Builds the default stack (Debian bookworm, minbase variant, plus what
buildpacks need) with debootstrap into DIR/<key>/rootfs, where <key> is a
hash of the package list; a second run with the same list is instant.
Prints the rootfs path. With --busybox, writes a tiny busybox stack to DIR
instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if busybox {
				if err := stack.BuildBusybox(cmd.Context(), out); err != nil {
					return err
				}
				fmt.Fprintln(env.Stdout, out)
				return nil
			}
			cfg := stack.Config{Dir: out, Mirror: mirror, Tar: tar, Progress: env.Stderr}
			if packages != "" {
				cfg.Packages = strings.Split(packages, ",")
			}
			start := time.Now()
			res, err := stack.Build(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if res.Cached {
				fmt.Fprintf(env.Stderr, "-----> Stack %s is cached (%s)\n", res.Key, time.Since(start).Round(time.Millisecond))
			}
			fmt.Fprintln(env.Stdout, res.Rootfs)
			if res.Layer != "" {
				fmt.Fprintln(env.Stdout, res.Layer)
			}
			return nil
		},
	}
	build.Flags().StringVar(&out, "out", "/var/lib/flynn/stacks", "cache `DIR` for stacks")
	build.Flags().StringVar(&mirror, "mirror", "", "Debian mirror (default: this machine's apt sources)")
	build.Flags().StringVar(&packages, "packages", "", "comma-separated packages instead of the default list")
	build.Flags().BoolVar(&tar, "tar", false, "also write the stack as a layer tar")
	build.Flags().BoolVar(&busybox, "busybox", false, "write a tiny busybox stack to --out")
	cmd.AddCommand(build)
	return cmd
}

// buildEnvKeys are the variables of a build job that configure the build
// or the job, not the app; the rest of the job's environment is the app's
// config and goes to the buildpacks' ENV_DIR.
var buildEnvKeys = []string{
	"PATH", "HOME", "HOSTNAME", "PWD", "SHLVL", "TERM", "USER", "PORT", "_",
	"DISCOVERD", "SLUG_URL", "SLUG_RUNTIME_URL", "SLUG_RUNTIME_DIGEST", "BUILD_CACHE_URL", "BUILDPACK_URL", "SOURCE_VERSION",
	"SOURCE_URL", "SLUG_RESULT_URL", "STACK", "BUILD_CACHE_VOLUME", "BUILD_CACHE_SAVE_LAST", "GO_STD_SEEDS", "GO_STD_SEED_URL",
}

func appEnvFromEnviron(environ []string) map[string]string {
	env := map[string]string{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || slices.Contains(buildEnvKeys, k) || strings.HasPrefix(k, "FLYNN_") {
			continue
		}
		env[k] = v
	}
	return env
}

func newSlugbuilderCmd(env Env) *cobra.Command {
	var (
		cfg        slugbuilder.Config
		cache      string
		envs       []string
		noEnviron  bool
		jsonResult bool
	)
	cmd := &cobra.Command{
		Use:   "slugbuilder",
		Short: "Build an app's source into a slug with buildpacks (build job entrypoint)",
		Long: `Reads the app's source (a tar or tar.gz) from --source or stdin, builds it
in --build-dir with buildpacks (Heroku buildpack API v2), and writes the slug
(a tar.gz of the build directory under ./app/, owned by the app user, as
Heroku slugs are) to --slug and a JSON result to --result.
Build output goes to stdout line by line.

Every variable of the environment that is not a build setting (PATH, HOME,
PORT, FLYNN_*, SLUG_URL, SLUG_RUNTIME_URL, BUILD_CACHE_URL, BUILD_CACHE_VOLUME,
BUILD_CACHE_SAVE_LAST, BUILDPACK_URL,
SOURCE_VERSION, GO_STD_SEEDS, GO_STD_SEED_URL, ...) is app config, given to buildpacks in ENV_DIR; --env
adds more.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			getenv := env.Getenv
			def := func(v *string, key string) {
				if *v == "" {
					*v = getenv(key)
				}
			}
			def(&cfg.Source, "SOURCE_URL")
			def(&cfg.Slug, "SLUG_URL")
			def(&cfg.RuntimeSlug, "SLUG_RUNTIME_URL")
			def(&cfg.RuntimeDigest, "SLUG_RUNTIME_DIGEST")
			def(&cfg.Result, "SLUG_RESULT_URL")
			def(&cache, "BUILD_CACHE_URL")
			def(&cfg.BuildpackURL, "BUILDPACK_URL")
			def(&cfg.SourceVersion, "SOURCE_VERSION")
			def(&cfg.CacheVolume, "BUILD_CACHE_VOLUME")
			if v := getenv("BUILD_CACHE_SAVE_LAST"); v != "" && !cmd.Flags().Changed("save-cache-last") {
				b, err := strconv.ParseBool(v)
				if err != nil {
					return fmt.Errorf("BUILD_CACHE_SAVE_LAST=%q: want 1 or 0", v)
				}
				cfg.SaveCacheLast = b
			}
			if cfg.CacheIn == "" {
				cfg.CacheIn = cache
			}
			if cfg.CacheOut == "" {
				cfg.CacheOut = cache
			}
			cfg.Env = map[string]string{}
			if !noEnviron {
				cfg.Env = appEnvFromEnviron(os.Environ())
			}
			for _, kv := range envs {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--env %q: want KEY=VALUE", kv)
				}
				cfg.Env[k] = v
			}
			cfg.Stdin, cfg.Output = env.Stdin, env.Stdout
			log, err := logging.New(env.Stderr, logging.Config{Level: getenv("FLYNN_LOG_LEVEL")})
			if err != nil {
				return err
			}
			res, err := slugbuilder.Build(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			if jsonResult {
				data, _ := json.Marshal(res)
				fmt.Fprintf(env.Stderr, "%s\n", data)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Source, "source", "", "source tarball: path, URL or - for stdin (env SOURCE_URL; default stdin)")
	f.StringVar(&cfg.BuildDir, "build-dir", "/app", "directory to build in; it becomes the slug")
	f.StringVar(&cfg.Slug, "slug", "", "where to write the slug: path or URL to PUT (env SLUG_URL)")
	f.StringVar(&cfg.RuntimeSlug, "runtime-slug", "", "where to write the slug's runtime layer (the hidden directories the build made in /app, and node_modules), which --slug then lacks: path or URL to PUT (env SLUG_RUNTIME_URL)")
	f.StringVar(&cfg.RuntimeDigest, "runtime-digest", "", "the last runtime layer's digest: one with that digest is reused, not written (env SLUG_RUNTIME_DIGEST)")
	f.StringVar(&cfg.Result, "result", "", "where to write the JSON result: path or URL to PUT (env SLUG_RESULT_URL)")
	f.StringVar(&cache, "cache", "", "build cache tar.gz, restored and saved: path or URL (env BUILD_CACHE_URL)")
	f.StringVar(&cfg.CacheIn, "cache-in", "", "build cache to restore (overrides --cache)")
	f.StringVar(&cfg.CacheOut, "cache-out", "", "where to save the build cache (overrides --cache)")
	f.StringVar(&cfg.CacheVolume, "cache-volume", "", "directory kept across builds that holds the cache unpacked, reused while it is the --cache blob (env BUILD_CACHE_VOLUME)")
	f.BoolVar(&cfg.SaveCacheLast, "save-cache-last", false, "save the build cache after writing the result and printing \"Build finished\", so a caller waiting for that line can go on meanwhile (env BUILD_CACHE_SAVE_LAST=1)")
	f.StringVar(&cfg.BuildpackURL, "buildpack-url", "", "buildpack: git URL[#ref], tarball path or URL, or directory (env BUILDPACK_URL)")
	f.StringVar(&cfg.SourceVersion, "source-version", "", "commit being built (env SOURCE_VERSION)")
	f.StringArrayVar(&envs, "env", nil, "app config `KEY=VALUE` for ENV_DIR (repeatable)")
	f.BoolVar(&noEnviron, "no-environ", false, "do not take app config from the environment")
	f.BoolVar(&jsonResult, "print-result", false, "also print the JSON result on stderr")
	return cmd
}

func newSlugrunnerCmd(env Env) *cobra.Command {
	appDir := slugrunner.DefaultAppDir
	cmd := &cobra.Command{
		Use:   "slugrunner [start TYPE | static | COMMAND [ARG...]]",
		Short: "Run a slug's process type or a command (app job entrypoint)",
		Long: `Runs a Procfile process type (start TYPE) or any command in the slug
directory /app as Heroku runs a dyno: HOME=/app, /app/bin first on PATH,
/app/.profile.d/*.sh and /app/.profile sourced. A Procfile line or a single
COMMAND argument is a command line for bash (sh when there is no bash). The
command replaces this process, so signals reach it.`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
				return cmd.Help()
			}
			return slugrunner.Exec(appDir, args, os.Environ())
		},
	}
	start := &cobra.Command{
		Use:   "start TYPE",
		Short: "Run a process type from /app/Procfile",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return slugrunner.Start(appDir, args[0], os.Environ())
		},
	}
	var static slugrunner.StaticConfig
	staticCmd := &cobra.Command{
		Use:   "static",
		Short: "Serve a directory of static files on $PORT",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if static.Addr == "" {
				port := env.Getenv("PORT")
				if port == "" {
					port = "8080"
				}
				static.Addr = ":" + port
			}
			log, err := logging.New(env.Stderr, logging.Config{Level: env.Getenv("FLYNN_LOG_LEVEL")})
			if err != nil {
				return err
			}
			return slugrunner.ServeStatic(cmd.Context(), static, log)
		},
	}
	staticCmd.Flags().StringVar(&static.Dir, "dir", "/app/public", "directory to serve")
	staticCmd.Flags().StringVar(&static.Addr, "addr", "", "listen address (default :$PORT, else :8080)")
	cmd.AddCommand(start, staticCmd)
	return cmd
}
