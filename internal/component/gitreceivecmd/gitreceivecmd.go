// Package gitreceivecmd is the entrypoint of gitreceive (git push and the image registry): its command, flags and
// wiring, run by flynn-control (cmd/flynn-control, what the system job runs) and by
// `flynn-host component`.
package gitreceivecmd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/component/etcdconn"
	"github.com/flynnrebuilt/flynn/internal/gitreceive"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
	"github.com/flynnrebuilt/flynn/internal/logging"
	"github.com/flynnrebuilt/flynn/internal/ociregistry"
)

// NewHook is the pre-receive hook git runs inside gitreceive
// (hidden: gitreceive installs it in every app repository).
func NewHook(env component.Env) *cobra.Command {
	return &cobra.Command{
		Use:    "gitreceive-hook",
		Short:  "git pre-receive hook of gitreceive (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := gitreceive.HookMain(env.Stdin, env.Stdout, env.Stderr, env.Getenv); code != 0 {
				return component.ExitError{Code: code}
			}
			return nil
		},
	}
}

// NewGitSSH is the SSH client git runs inside gitreceive to fetch a
// deploy from an SSH URL (hidden: gitreceive sets it as GIT_SSH_COMMAND).
func NewGitSSH(env component.Env) *cobra.Command {
	return &cobra.Command{
		Use:                "git-ssh [-p PORT] [-o OPTION] [USER@]HOST COMMAND",
		Short:              "SSH client of gitreceive's git deploys (internal)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := gitreceive.GitSSHMain(args, env.Stdin, env.Stdout, env.Stderr, env.Getenv); code != 0 {
				return component.ExitError{Code: code}
			}
			return nil
		},
	}
}

// gitreceiveFlags are the settings of `flynn-host component gitreceive`.
type gitreceiveFlags struct {
	discoverd                string
	etcdTLS                  string
	sshAddr, httpAddr        string
	controllerURL, ctrlKey   string
	blobURL, jobBlobURL      string
	blobKey                  string
	etcd, token              string
	hostKeyFile, repoDir     string
	stackURL, stackSHA256    string
	flynnHostBin, caBundle   string
	logLevel                 string
	noSharedGo               bool
	goProxy                  string
	buildTimeout, deployWait time.Duration
}

// New is `flynn-host component gitreceive`: git push over SSH
// and smart HTTP, building with slugbuilder jobs and deploying through the
// controller.
func New(env component.Env) *cobra.Command {
	get := func(k string) string {
		if env.Getenv == nil {
			return ""
		}
		return env.Getenv(k)
	}
	def := func(k, d string) string {
		if v := get(k); v != "" {
			return v
		}
		return d
	}
	var fl gitreceiveFlags
	cmd := &cobra.Command{
		Use:   "gitreceive",
		Short: "Accept git pushes (SSH and HTTP), build them and deploy",
		Long: `Serves git push over SSH (keys registered with flynn key add) and smart HTTP
(the cluster key as password). A push to main or master is archived to the
blobstore and built by a slugbuilder job on a host; its output streams to
the pusher. The slug becomes an artifact and a release (previous env kept),
which is deployed; the first deploy of an app with a web type scales web=1.

The HTTP listener is also the cluster's image registry (images.DOMAIN): the
OCI distribution API under /v2/, storing in the blobstore; every image pushed
becomes an artifact, which flynn docker push deploys.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// The hook and the SSH client are hidden subcommands of this
			// command, in whichever binary runs it (flynn-gitreceive, or
			// flynn-host component gitreceive).
			sub := strings.Fields(cmd.CommandPath())[1:]
			return runGitreceive(cmd.Context(), env, fl, sub)
		},
	}
	cmd.AddCommand(NewHook(env), NewGitSSH(env))
	f := cmd.Flags()
	f.StringVar(&fl.sshAddr, "ssh-addr", def("SSH_ADDR", ":2222"), "address to serve git over SSH on (empty: no SSH)")
	f.StringVar(&fl.httpAddr, "http-addr", ":"+def("PORT", "8080"), "address to serve git over HTTP on (default :$PORT)")
	f.StringVar(&fl.controllerURL, "controller", def("CONTROLLER_URL", "http://controller.discoverd"), "controller URL (default $CONTROLLER_URL)")
	f.StringVar(&fl.ctrlKey, "controller-key", def("CONTROLLER_KEY", get("AUTH_KEY")), "controller key, also the HTTP push password (default $CONTROLLER_KEY)")
	f.StringVar(&fl.blobURL, "blobstore", def("BLOBSTORE_URL", "http://blobstore.discoverd"), "blobstore URL (default $BLOBSTORE_URL)")
	f.StringVar(&fl.jobBlobURL, "job-blobstore", get("JOB_BLOBSTORE_URL"), "blobstore URL as build jobs reach it (default --blobstore)")
	f.StringVar(&fl.blobKey, "blobstore-key", get("BLOBSTORE_KEY"), "blobstore write key (default the controller key)")
	f.StringVar(&fl.discoverd, "discoverd", get("DISCOVERD"), "discoverd URL, to wait until a first web process is routable (default $DISCOVERD)")
	f.StringVar(&fl.etcd, "etcd", def("ETCD_ENDPOINTS", "http://127.0.0.1:2379"), "etcd endpoints, comma-separated, to find hosts (default $ETCD_ENDPOINTS)")
	etcdconn.TLSFlag(f, &fl.etcdTLS, env.Getenv)
	f.StringVar(&fl.token, "token", get("FLYNN_HOST_TOKEN"), "host agents' key (default $FLYNN_HOST_TOKEN)")
	f.StringVar(&fl.hostKeyFile, "host-key", def("SSH_HOST_KEY_FILE", "/var/lib/flynn/gitreceive/ssh_host_ed25519_key"), "SSH host key file, generated when missing")
	f.StringVar(&fl.repoDir, "repo-dir", def("REPO_DIR", "/var/lib/flynn/gitreceive/repos"), "where app repositories are kept (a cache of the blobstore copy)")
	f.StringVar(&fl.stackURL, "stack-url", get("STACK_URL"), "URL of the stack layer builds and apps run on (default $STACK_URL)")
	f.StringVar(&fl.stackSHA256, "stack-sha256", get("STACK_SHA256"), "hex sha256 of the stack layer (default $STACK_SHA256)")
	f.StringVar(&fl.flynnHostBin, "flynn-host-bin", def("FLYNN_HOST_BIN", "/usr/local/bin/flynn-host"), "flynn-host binary on the hosts, mounted into build and app jobs")
	f.StringVar(&fl.caBundle, "ca-bundle", def("CA_BUNDLE", gitreceive.DefaultCABundle), "CA bundle on the hosts mounted into build jobs (empty: none)")
	f.DurationVar(&fl.buildTimeout, "build-timeout", 15*time.Minute, "longest a build may take")
	f.DurationVar(&fl.deployWait, "deploy-timeout", 0, "longest to wait for a deploy (default the app's deploy timeout)")
	f.StringVar(&fl.logLevel, "log-level", def("FLYNN_LOG_LEVEL", "info"), "debug, info, warn or error")
	f.StringVar(&fl.goProxy, "go-proxy", get("GOPROXY"), "module proxy that shared builds of Go fetch the toolchain from (default $GOPROXY, else https://proxy.golang.org)")
	f.BoolVar(&fl.noSharedGo, "no-shared-go-builds", get("NO_SHARED_GO_BUILDS") != "", "make no shared builds of Go and its standard library for Go apps' first builds (default: made, unless $NO_SHARED_GO_BUILDS is set)")
	return cmd
}

func runGitreceive(ctx context.Context, env component.Env, fl gitreceiveFlags, sub []string) error {
	log, err := logging.New(env.Stderr, logging.Config{Level: fl.logLevel})
	if err != nil {
		return err
	}
	log = log.With("component", "gitreceive")
	switch {
	case fl.ctrlKey == "":
		return errors.New("no controller key: set --controller-key or $CONTROLLER_KEY")
	case fl.stackURL == "" || fl.stackSHA256 == "":
		return errors.New("no stack layer: set --stack-url and --stack-sha256 (flynn-host stack build --tar makes one)")
	case fl.token == "":
		return errors.New("no host token: set --token or $FLYNN_HOST_TOKEN")
	}
	if fl.blobKey == "" {
		fl.blobKey = fl.ctrlKey
	}
	hookBin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	etcd, err := etcdconn.Client(fl.etcd, fl.etcdTLS)
	if err != nil {
		return err
	}
	defer etcd.Close()
	disc := component.Discoverd(fl.discoverd, fl.token)
	hc := component.ServiceHTTP(disc)
	ctrl := controllerclient.NewWithHTTP(fl.controllerURL, fl.ctrlKey, hc)
	blobs := blobclient.New(fl.blobURL, fl.blobKey, hc)
	var jobBlobBase func(context.Context) (string, error)
	if u, err := url.Parse(fl.blobURL); err == nil && strings.HasSuffix(u.Hostname(), discoverdclient.ServiceDomain) && fl.jobBlobURL == "" && disc != nil {
		// Build jobs get the address of a live instance: they cannot
		// look services up themselves.
		svc := strings.TrimSuffix(u.Hostname(), discoverdclient.ServiceDomain)
		jobBlobBase = func(ctx context.Context) (string, error) {
			insts, err := disc.Instances(ctx, svc)
			if err != nil {
				return "", err
			}
			if len(insts) == 0 {
				return "", fmt.Errorf("no instance of service %s is up", svc)
			}
			return u.Scheme + "://" + insts[0].Addr, nil // the oldest: the replicas share what it stores
		}
	}
	// Ended at shutdown, or when a server fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	recv, err := gitreceive.NewReceiver(gitreceive.ReceiverConfig{
		Controller: ctrl, Blobs: blobs, JobBlobURL: fl.jobBlobURL, JobBlobBase: jobBlobBase, BlobKey: fl.blobKey,
		Jobs: &gitreceive.HostJobRunner{Etcd: etcd, Token: fl.token},
		StackLayer: &api.ImageLayer{ID: fl.stackSHA256, Type: api.LayerTypeTar, URL: fl.stackURL,
			Hashes: map[string]string{"sha256": fl.stackSHA256}},
		FlynnHostBin: fl.flynnHostBin, CABundle: fl.caBundle,
		BuildTimeout: fl.buildTimeout, DeployTimeout: fl.deployWait,
		Discoverd: disc, NoGoStd: fl.noSharedGo, GoProxy: fl.goProxy,
		BaseContext: ctx, // a shared build of Go under way is stopped at shutdown
	}, log)
	if err != nil {
		return err
	}
	srv, err := gitreceive.New(gitreceive.Config{
		RepoDir: fl.repoDir, HookBin: hookBin, HookArgs: append(slices.Clone(sub), "gitreceive-hook"),
		SSHCommand: append(append([]string{hookBin}, sub...), "git-ssh"),
		Receiver:   recv, Cache: &gitreceive.BlobRepoCache{Blobs: blobs},
	}, log)
	if err != nil {
		return err
	}
	var sshLn net.Listener
	var hostKey ssh.Signer
	if fl.sshAddr != "" {
		if hostKey, err = loadOrCreateHostKey(fl.hostKeyFile); err != nil {
			return err
		}
		if sshLn, err = net.Listen("tcp", fl.sshAddr); err != nil {
			return fmt.Errorf("ssh listen: %w", err)
		}
	}
	httpLn, err := net.Listen("tcp", fl.httpAddr)
	if err != nil {
		if sshLn != nil {
			sshLn.Close()
		}
		return fmt.Errorf("http listen: %w", err)
	}
	log.Info("gitreceive listening", "http", httpLn.Addr().String(), "ssh", fl.sshAddr)

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	start := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				errc <- err
				cancel()
			}
		}()
	}
	start(func() error { return srv.Run(ctx) })
	start(func() error {
		auth := httpapi.NewKeyAuth(fl.ctrlKey)
		// The same listener is the cluster's image registry
		// (images.DOMAIN is routed here too): /v2/ is never a git path.
		mux := http.NewServeMux()
		mux.Handle("/v2/", ociregistry.New(ociregistry.Config{Blobs: blobs, Auth: auth, Artifacts: ctrl}, log.With("component", "registry")))
		mux.Handle("/", srv.Handler(auth))
		return httpapi.Serve(ctx, httpLn, mux, log)
	})
	if sshLn != nil {
		start(func() error {
			return srv.ServeSSH(ctx, sshLn, hostKey, &gitreceive.ControllerKeys{Controller: ctrl})
		})
	}
	<-ctx.Done()
	wg.Wait()
	recv.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// loadOrCreateHostKey reads an SSH host key, generating an ed25519 one
// when the file does not exist.
func loadOrCreateHostKey(path string) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, gerr
		}
		blk, merr := ssh.MarshalPrivateKey(priv, "gitreceive")
		if merr != nil {
			return nil, merr
		}
		data = pem.EncodeToMemory(blk)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("host key: %w", err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, fmt.Errorf("host key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("host key %s: %w", path, err)
	}
	return signer, nil
}
