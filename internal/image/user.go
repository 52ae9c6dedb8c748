package image

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ResolveUser turns an image's user (its config's User: "uid", "uid:gid",
// "name", "name:group" or a mix) into numeric IDs, looking names up in the
// image's /etc/passwd and /etc/group: those of the topmost of layers (the
// extracted layer directories, bottom first) that has the file. A user
// given by uid alone gets its passwd entry's group, else the same ID.
func ResolveUser(layers []string, user string) (uid, gid uint32, err error) {
	u, g, hasGroup := strings.Cut(user, ":")
	if u == "" || (hasGroup && g == "") {
		return 0, 0, fmt.Errorf("user %q: want USER[:GROUP]", user)
	}
	passwd := topFile(layers, "etc/passwd")
	uid, pwGID, err := lookup(passwd, u, 2)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: %w", u, err)
	}
	if !hasGroup {
		return uid, pwGID, nil
	}
	gid, _, err = lookup(topFile(layers, "etc/group"), g, 2)
	if err != nil {
		return 0, 0, fmt.Errorf("group %q: %w", g, err)
	}
	return uid, gid, nil
}

// topFile is the path of rel in the topmost layer that has it, or "".
func topFile(layers []string, rel string) string {
	for i := len(layers) - 1; i >= 0; i-- {
		p := filepath.Join(layers[i], rel)
		if _, err := os.Lstat(p); err == nil {
			return p
		}
	}
	return ""
}

// lookup finds name (or a number) in a passwd or group file: it returns
// the ID in field idField and, for passwd, the primary group (field 3;
// the ID itself when name is a number not in the file).
func lookup(file, name string, idField int) (id, group uint32, err error) {
	if n, perr := strconv.ParseUint(name, 10, 32); perr == nil {
		id, group = uint32(n), uint32(n)
		// A numeric user's primary group is its passwd entry's.
		if file != "" {
			if f, ferr := os.Open(file); ferr == nil {
				defer f.Close()
				for sc := bufio.NewScanner(f); sc.Scan(); {
					fields := strings.Split(sc.Text(), ":")
					if len(fields) > 3 && fields[idField] == name {
						if g, err := strconv.ParseUint(fields[3], 10, 32); err == nil {
							group = uint32(g)
						}
						break
					}
				}
			}
		}
		return id, group, nil
	}
	if file == "" {
		return 0, 0, errors.New("not a number and the image has no passwd or group file to look it up in")
	}
	f, err := os.Open(file)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) <= idField || fields[0] != name {
			continue
		}
		n, err := strconv.ParseUint(fields[idField], 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("bad entry in %s", filepath.Base(file))
		}
		id, group = uint32(n), uint32(n)
		if len(fields) > 3 {
			if g, err := strconv.ParseUint(fields[3], 10, 32); err == nil {
				group = uint32(g)
			}
		}
		return id, group, nil
	}
	return 0, 0, fmt.Errorf("not in the image's %s", filepath.Base(file))
}
