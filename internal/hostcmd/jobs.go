package hostcmd

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/host"
	"github.com/flynnrebuilt/flynn/internal/host/runtime/supervisor"
	"github.com/flynnrebuilt/flynn/internal/image"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// newJobCmds returns the host agent and job administration commands.
func newJobCmds(env Env) []*cobra.Command {
	return []*cobra.Command{
		newAgentCmd(env), newSuperviseCmd(), newImageCmd(),
		newPsCmd(env), newInspectCmd(env), newLogCmd(env), newRunCmd(env),
		newStopCmd(env), newSignalCmd(env),
	}
}

func newAgentCmd(env Env) *cobra.Command {
	var cfg host.Config
	var token, level, portRange string
	var mountAllow []string
	var fw firewallFlags
	cmd := &cobra.Command{
		Use:    "agent",
		Short:  "Run the host agent on its own (without etcd and discoverd)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" {
				token = env.Getenv("FLYNN_TOKEN")
			}
			cfg.Keys = []string{token}
			log, err := logging.New(cmd.ErrOrStderr(), logging.Config{Level: level})
			if err != nil {
				return err
			}
			if cfg.PortMin, cfg.PortMax, err = parseJobPortRange(portRange); err != nil {
				return err
			}
			warnEphemeral(log, cfg.PortMin, cfg.PortMax)
			if cfg.MountAllow, err = mountAllowList(mountAllow); err != nil {
				return err
			}
			if err := fw.apply(&cfg); err != nil {
				return err
			}
			a, err := host.New(cfg, log)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/flynn", "directory for job state, layers and logs")
	f.StringSliceVar(&mountAllow, "mount-allow", nil, mountAllowHelp)
	fw.register(cmd)
	f.Int64Var(&cfg.MemoryCapacity, "memory-capacity", 0, "memory in bytes the jobs may ask for in all (default: the host's memory)")
	f.StringVar(&cfg.Listen, "listen", ":1113", "API listen address")
	f.StringVar(&token, "token", "", "cluster token (default $FLYNN_TOKEN)")
	f.StringVar(&cfg.ID, "host-id", "", "host id (default the hostname)")
	f.StringVar(&cfg.Runc, "runc", "runc", "OCI runtime binary")
	f.StringVar(&cfg.Bridge, "bridge", "flynnbr0", "bridge jobs attach to")
	f.StringVar(&cfg.Subnet, "subnet", "100.64.0.0/16", "job network")
	f.StringVar(&cfg.HostIP, "host-ip", "", "address job ports are published on (default all)")
	f.StringVar(&portRange, "port-range", defaultPortRange, "host ports given to jobs, LO-HI")
	f.StringVar(&cfg.DNS, "dns", "", "nameserver for jobs (default the bridge address)")
	f.StringVar(&cfg.Discoverd, "discoverd", "", "discoverd URL given to jobs as $DISCOVERD")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", "flynn", "cgroup jobs are placed under")
	f.DurationVar(&cfg.StopGrace, "stop-grace", 10*time.Second, "time between SIGTERM and SIGKILL when stopping a job")
	f.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newSuperviseCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "supervise JOBDIR",
		Short:  "Supervise one job's container (started by the host agent)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return supervisor.Run(args[0])
		},
	}
}

func newImageCmd() *cobra.Command {
	var out, busybox string
	cmd := &cobra.Command{
		Use:   "image busybox --out FILE",
		Short: "Build a minimal busybox rootfs layer (tar.gz)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "busybox" {
				return fmt.Errorf("unknown image %q: only busybox can be built", args[0])
			}
			if out == "" {
				return errors.New("--out FILE is required")
			}
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			if err := image.WriteBusyboxLayer(f, busybox); err != nil {
				f.Close()
				os.Remove(out)
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			d, err := image.FileDigest(out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sha256:%s %s\n", d, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "layer file to write")
	cmd.Flags().StringVar(&busybox, "busybox", image.DefaultBusybox, "static busybox binary")
	return cmd
}

// hostFlags adds --host and --token and returns a client maker.
func hostFlags(cmd *cobra.Command, env Env) func() *hostclient.Client {
	var hostURL, token string
	cmd.Flags().StringVar(&hostURL, "host", "", "host agent URL (default $FLYNN_HOST_URL or http://127.0.0.1:1113)")
	cmd.Flags().StringVar(&token, "token", "", "cluster token (default $FLYNN_TOKEN)")
	return func() *hostclient.Client {
		if hostURL == "" {
			hostURL = env.Getenv("FLYNN_HOST_URL")
		}
		if hostURL == "" {
			hostURL = "http://127.0.0.1:1113"
		}
		if token == "" {
			token = env.Getenv("FLYNN_TOKEN")
		}
		return hostclient.New(hostURL, token)
	}
}

func newPsCmd(env Env) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the host's jobs (running ones unless -a)",
		Args:  cobra.NoArgs,
	}
	client := hostFlags(cmd, env)
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include jobs that have ended")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		jobs, err := client().ListJobs(cmd.Context())
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATUS\tCREATED\tPORTS\tCOMMAND")
		for _, j := range jobs {
			if !all && j.Status != api.HostJobRunning && j.Status != api.HostJobStarting {
				continue
			}
			var ports []string
			for i, hp := range j.HostPorts {
				if i < len(j.Job.Config.Ports) {
					ports = append(ports, fmt.Sprintf("%d->%d", hp, j.Job.Config.Ports[i].Port))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.Job.ID, j.Status, j.CreatedAt.Local().Format(time.DateTime), strings.Join(ports, ","), strings.Join(j.Job.Config.Args, " "))
		}
		return tw.Flush()
	}
	return cmd
}

func newInspectCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{Use: "inspect JOB", Short: "Show a job as JSON", Args: cobra.ExactArgs(1)}
	client := hostFlags(cmd, env)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		j, err := client().GetJob(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		return enc.Encode(j)
	}
	return cmd
}

func newLogCmd(env Env) *cobra.Command {
	var follow, timestamps, initLog bool
	cmd := &cobra.Command{Use: "log JOB", Short: "Show a job's output", Args: cobra.ExactArgs(1)}
	client := hostFlags(cmd, env)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing output until the job ends")
	cmd.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "prefix lines with their time")
	cmd.Flags().BoolVarP(&initLog, "init", "i", false, "also show the platform's lines about the job (start, exit, out of memory), on stderr")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		l, err := client().JobLog(cmd.Context(), args[0], follow)
		if err != nil {
			return err
		}
		defer l.Close()
		for {
			line, err := l.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				if cmd.Context().Err() != nil {
					return nil
				}
				return err
			}
			if line.Stream == api.LogInit && !initLog {
				continue
			}
			w := cmd.OutOrStdout()
			if line.Stream == api.LogStderr || line.Stream == api.LogInit {
				w = cmd.ErrOrStderr()
			}
			if timestamps {
				fmt.Fprintf(w, "%s %s\n", line.Time.Format(time.RFC3339Nano), line.Msg)
			} else {
				fmt.Fprintln(w, line.Msg)
			}
		}
	}
	return cmd
}

func newStopCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{Use: "stop JOB...", Short: "Stop jobs (SIGTERM, then SIGKILL after the grace period)", Args: cobra.MinimumNArgs(1)}
	client := hostFlags(cmd, env)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c := client()
		for _, id := range args {
			j, err := c.StopJob(cmd.Context(), id)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", id, j.Status)
		}
		return nil
	}
	return cmd
}

func newSignalCmd(env Env) *cobra.Command {
	cmd := &cobra.Command{Use: "signal JOB SIGNAL", Short: "Send a signal (name or number) to a job", Args: cobra.ExactArgs(2)}
	client := hostFlags(cmd, env)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return client().SignalJob(cmd.Context(), args[0], args[1])
	}
	return cmd
}

func newRunCmd(env Env) *cobra.Command {
	var tty bool
	var id string
	var uid int
	cmd := &cobra.Command{
		Use:   "run [--tty] IMAGE -- CMD...",
		Short: "Run a job interactively and exit with its exit status",
		Long: `Run a job on the host with stdin, stdout and stderr attached. IMAGE is a
layer file (tar or tar.gz) on the host or an OCI image reference.`,
		Args: cobra.MinimumNArgs(1),
	}
	client := hostFlags(cmd, env)
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "allocate a terminal")
	cmd.Flags().StringVar(&id, "id", "", "job id (default random)")
	cmd.Flags().IntVar(&uid, "uid", -1, "user id to run as (default the host's unprivileged default)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		art, err := artifactFor(args[0])
		if err != nil {
			return err
		}
		if id == "" {
			b := make([]byte, 6)
			rand.Read(b)
			id = "run-" + hex.EncodeToString(b)
		}
		c := client()
		job := &api.HostJob{ID: id, Artifacts: []*api.Artifact{art}, Config: api.HostJobConfig{Args: args[1:], TTY: tty, Stdin: true}}
		if uid >= 0 {
			u := uint32(uid)
			job.Config.Uid = &u
		}
		aj, err := c.AddJob(ctx, job)
		if err != nil {
			return err
		}
		if aj.Status == api.HostJobFailed {
			msg := ""
			if aj.Error != nil {
				msg = *aj.Error
			}
			return fmt.Errorf("job failed to start: %s", msg)
		}
		req := &api.AttachRequest{JobID: id, Stdin: true}
		inFile, _ := env.Stdin.(*os.File)
		if tty && inFile != nil && term.IsTerminal(int(inFile.Fd())) {
			if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
				req.Width, req.Height = uint16(w), uint16(h)
			}
			old, err := term.MakeRaw(int(inFile.Fd()))
			if err == nil {
				defer term.Restore(int(inFile.Fd()), old)
			}
		}
		att, err := c.Attach(ctx, req)
		if err != nil {
			return err
		}
		defer att.Close()
		if req.Width > 0 {
			winch := make(chan os.Signal, 1)
			signal.Notify(winch, syscall.SIGWINCH)
			defer signal.Stop(winch)
			go func() {
				for range winch {
					if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
						att.Resize(uint16(h), uint16(w))
					}
				}
			}()
		}
		go func() {
			io.Copy(att, env.Stdin)
			if !tty {
				att.CloseStdin()
			}
		}()
		exit, err := att.Receive(cmd.OutOrStdout(), cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		if exit.Error != "" {
			return errors.New(exit.Error)
		}
		if exit.OOM {
			fmt.Fprintln(cmd.ErrOrStderr(), "flynn-host: job was killed: out of memory")
		}
		if exit.ExitStatus != 0 {
			return exitError{code: exit.ExitStatus}
		}
		return nil
	}
	return cmd
}

// artifactFor turns IMAGE into an artifact: a layer file on this machine
// (sent as a file URL with its sha256) or an OCI image reference.
func artifactFor(img string) (*api.Artifact, error) {
	if fi, err := os.Stat(img); err == nil && fi.Mode().IsRegular() {
		abs, err := filepath.Abs(img)
		if err != nil {
			return nil, err
		}
		d, err := image.FileDigest(abs)
		if err != nil {
			return nil, err
		}
		typ := api.LayerTypeTar
		if strings.HasSuffix(abs, "gz") {
			typ = api.LayerTypeTarGz
		}
		return &api.Artifact{Type: api.ArtifactTypeFlynn, URI: "file://" + abs, Manifest: &api.ImageManifest{
			Type: api.ManifestType,
			Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{{
				ID: d, Type: typ, Length: fi.Size(), Hashes: map[string]string{"sha256": d}, URL: "file://" + abs,
			}}}},
		}}, nil
	}
	if strings.Contains(img, "/") || strings.Contains(img, ":") {
		return &api.Artifact{Type: api.ArtifactTypeDocker, URI: img}, nil
	}
	return nil, fmt.Errorf("image %q is neither a layer file nor an image reference", img)
}
