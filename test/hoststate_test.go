package test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// cleanHostState removes what jobs of a test host can leave behind when
// they die without their own cleanup (a host killed mid-test): iptables
// rules naming the job subnet's prefix or the CNI network (the bridge), the
// CNI chains they leave empty, and the cgroups under parent.
func cleanHostState(bridge, subnetPrefix, cgroupParent string) {
	network := `name: \"` + bridge + `\"`
	for _, table := range []string{"nat", "filter"} {
		b, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "-A ") && (strings.Contains(line, subnetPrefix) || strings.Contains(line, network)) {
				// iptables-save quotes as a shell does.
				exec.Command("sh", "-c", "iptables -t "+table+" -D "+strings.TrimPrefix(line, "-A ")).Run()
			}
		}
	}
	// Chains CNI made per job, now empty (-X fails on any still in use).
	if b, err := exec.Command("iptables-save", "-t", "nat").Output(); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, ":CNI-"); ok && !strings.HasPrefix(name, "HOSTPORT") {
				exec.Command("iptables", "-t", "nat", "-X", "CNI-"+strings.Fields(name)[0]).Run()
			}
		}
	}
	var dirs []string
	tops, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupParent)
	for _, top := range append(tops, "/sys/fs/cgroup/"+cgroupParent) {
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	sort.Sort(sort.Reverse(sort.StringSlice(dirs))) // children first
	for _, d := range dirs {
		os.Remove(d)
	}
}
