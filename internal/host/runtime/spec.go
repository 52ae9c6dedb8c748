package runtime

import (
	"fmt"
	"path"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Defaults for job limits.
const (
	DefaultMemory   = 1 << 30
	DefaultMaxFD    = 10000
	DefaultMaxProcs = 4096
	// NobodyID is the user and group jobs run as unless they ask otherwise.
	NobodyID = 65534
)

// Mount is a host path bind-mounted into a job.
type Mount struct {
	Source    string `json:"source"`
	Target    string `json:"target"`
	Writeable bool   `json:"writeable,omitempty"`
}

// Port is a port a job listens on.
type Port struct {
	Port  int    `json:"port"`
	Proto string `json:"proto,omitempty"`
}

// Spec is everything the runtime needs to run one job. The agent fills it
// from a validated api.HostJob.
type Spec struct {
	ID string `json:"id"`
	// Layers are extracted layer directories, bottom first.
	Layers     []string `json:"layers"`
	Args       []string `json:"args"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	UID        uint32   `json:"uid"`
	GID        uint32   `json:"gid"`
	TTY        bool     `json:"tty,omitempty"`
	Stdin      bool     `json:"stdin,omitempty"`
	Ports      []Port   `json:"ports,omitempty"`
	Mounts     []Mount  `json:"mounts,omitempty"`
	// HostNetwork runs the job in the host's network namespace; its
	// ports are then host ports it binds itself.
	HostNetwork bool `json:"host_network,omitempty"`
	// System lets a job on the bridge through the jobs' firewall: it
	// reaches the host's ports.
	System bool `json:"system,omitempty"`
	// ReachPorts lets a job on the bridge reach these TCP ports at any
	// address (api.ContainerConfig.ReachPorts).
	ReachPorts []int  `json:"reach_ports,omitempty"`
	Hostname   string `json:"hostname,omitempty"`
	// Memory is the limit in bytes; CPUShares the cgroup cpu shares;
	// MaxProcs the pids limit; MaxFD RLIMIT_NOFILE. Zero means default.
	Memory    int64  `json:"memory,omitempty"`
	CPUShares uint64 `json:"cpu_shares,omitempty"`
	MaxProcs  int64  `json:"max_procs,omitempty"`
	MaxFD     uint64 `json:"max_fd,omitempty"`
	// TempDisk bounds the job's writable layer (its rootfs changes) in
	// bytes; zero leaves it unbounded.
	TempDisk int64 `json:"temp_disk,omitempty"`
	// Init is a static init binary on the host (tini) run as the
	// container's PID 1 in front of Args; empty runs Args as PID 1.
	Init string `json:"init,omitempty"`
}

// InitPath is where a job's init is mounted in its container.
const InitPath = "/.flynn/init"

// jobCaps are the capabilities a job's root user keeps: enough to run
// ordinary daemons, none that reach outside the container.
var jobCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE",
}

// deniedSyscalls fail with EPERM in every job: kernel modules, mounts,
// namespaces, tracing, keyrings, clocks, BPF and the like.
var deniedSyscalls = []string{
	"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
	"delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
	"get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
	"kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
	"mount_setattr", "move_mount", "move_pages", "name_to_handle_at", "nfsservctl",
	"open_by_handle_at", "open_tree", "perf_event_open", "pivot_root",
	"process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl",
	"reboot", "request_key", "set_mempolicy", "setns", "settimeofday", "adjtimex",
	"stime", "swapoff", "swapon", "sysfs", "syslog", "umount", "umount2", "unshare",
	"uselib", "userfaultfd", "ustat", "vhangup", "vm86", "vm86old",
}

var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
	"/sys/firmware", "/sys/devices/virtual/powercap",
}

var readonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// ociSpec builds the OCI runtime config for a job whose bundle dir holds
// rootfs/ and resolv.conf; netns is the pinned namespace (empty for host
// network) and cgroupsPath the job's cgroup.
func ociSpec(s *Spec, bundle, netns, cgroupsPath string) *specs.Spec {
	mem := s.Memory
	if mem <= 0 {
		mem = DefaultMemory
	}
	maxFD := s.MaxFD
	if maxFD == 0 {
		maxFD = DefaultMaxFD
	}
	pids := s.MaxProcs
	if pids <= 0 {
		pids = DefaultMaxProcs
	}
	shares := s.CPUShares
	if shares == 0 {
		shares = 1024
	}
	cwd := s.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	caps := &specs.LinuxCapabilities{Bounding: jobCaps}
	if s.UID == 0 {
		caps.Effective, caps.Permitted = jobCaps, jobCaps
	}
	hostname := s.Hostname
	if hostname == "" {
		hostname = s.ID
	}
	if len(hostname) > 63 {
		hostname = hostname[:63]
	}
	env := s.Env
	if !hasEnv(env, "PATH") {
		env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	}
	if s.TTY && !hasEnv(env, "TERM") {
		env = append(env, "TERM=xterm")
	}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: path.Join(bundle, "resolv.conf"), Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
	}
	if s.HostNetwork {
		// sysfs cannot be mounted afresh without a network namespace
		// of our own; show the host's read-only.
		mounts = append(mounts, specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "ro", "nosuid", "noexec", "nodev"}})
	} else {
		mounts = append(mounts,
			specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		)
	}
	for _, m := range s.Mounts {
		opts := []string{"rbind", "nosuid", "nodev"}
		if !m.Writeable {
			opts = append(opts, "ro")
		}
		mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: opts})
	}
	args := s.Args
	if s.Init != "" {
		// PID 1 gets no signal it has no handler for, and reaps orphans:
		// a small init does both for the job (-g: signals go to the
		// job's whole process group, as to a shell pipeline).
		mounts = append(mounts, specs.Mount{Destination: InitPath, Type: "bind", Source: s.Init, Options: []string{"rbind", "ro", "nosuid", "nodev"}})
		args = append([]string{InitPath, "-g", "--"}, s.Args...)
	}
	ns := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}}
	if !s.HostNetwork {
		ns = append(ns, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns})
	}
	eperm := uint(1)
	return &specs.Spec{
		Version: "1.0.2",
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			Terminal:        s.TTY,
			User:            specs.User{UID: s.UID, GID: s.GID},
			Args:            args,
			Env:             env,
			Cwd:             cwd,
			Capabilities:    caps,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: maxFD, Soft: maxFD}},
			NoNewPrivileges: true,
		},
		Hostname: hostname,
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath: cgroupsPath,
			Namespaces:  ns,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
				Memory:  &specs.LinuxMemory{Limit: &mem},
				CPU:     &specs.LinuxCPU{Shares: &shares},
				Pids:    &specs.LinuxPids{Limit: &pids},
			},
			Seccomp: &specs.LinuxSeccomp{
				DefaultAction: specs.ActAllow,
				Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
				Syscalls:      []specs.LinuxSyscall{{Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm}},
			},
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
		},
	}
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, key+"=") {
			return true
		}
	}
	return false
}

// CPUShares converts milli-cores to cgroup cpu shares (1000 = 1024).
func CPUShares(milli int64) uint64 {
	s := milli * 1024 / 1000
	if s < 2 {
		s = 2
	}
	return uint64(s)
}

func overlayOptions(layers []string, upper, work string) (string, error) {
	if len(layers) == 0 {
		return "", fmt.Errorf("no layers")
	}
	lower := make([]string, len(layers))
	for i, l := range layers {
		if strings.ContainsAny(l, ":,") {
			return "", fmt.Errorf("layer path %q has a ':' or ','", l)
		}
		lower[len(layers)-1-i] = l
	}
	return "lowerdir=" + strings.Join(lower, ":") + ",upperdir=" + upper + ",workdir=" + work, nil
}
