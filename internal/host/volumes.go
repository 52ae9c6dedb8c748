package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
)

// Volumes are directories under <state>/volumes/<id>, each with its
// record in <state>/volumes/<id>.json. A volume is made the first time a
// job names it (api.VolumeBinding) and kept, with its files, across job
// restarts and host agent restarts, until it is deleted (DELETE
// /host/volumes/{id}, refused while a job uses it) or, when the binding
// says delete_on_stop, until its job ends. One running job at a time may
// use a volume: a database's data directory has one server.

var volumeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func (a *Agent) volumesDir() string { return filepath.Join(a.cfg.StateDir, "volumes") }

func (a *Agent) volumePath(id string) string { return filepath.Join(a.volumesDir(), id) }

// validateVolumes checks a job's volume bindings.
func validateVolumes(c *api.HostJobConfig) error {
	seen := map[string]bool{}
	for i, v := range c.Volumes {
		f := fmt.Sprintf("config.volumes[%d]", i)
		if !volumeIDRe.MatchString(v.VolumeID) {
			return api.Validation(f+".volume_id", "volume id %q must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", v.VolumeID)
		}
		if seen[v.VolumeID] {
			return api.Validation(f+".volume_id", "volume %s is bound twice", v.VolumeID)
		}
		seen[v.VolumeID] = true
		if !cleanAbs(v.Target) {
			return api.Validation(f+".target", "volume target must be a clean absolute path without '..'")
		}
		for _, t := range forbiddenTargets {
			if v.Target == t || (t != "/" && strings.HasPrefix(v.Target, t+"/")) {
				return api.Validation(f+".target", "cannot mount a volume over %s", t)
			}
		}
	}
	return nil
}

// volumeUserLocked returns the running job other than jobID that uses
// volume id, or ""; the caller holds a.mu.
func (a *Agent) volumeUserLocked(id, jobID string) string {
	for jid, j := range a.jobs {
		if jid == jobID || !running(j.active.Status) {
			continue
		}
		for _, v := range j.active.Job.Config.Volumes {
			if v.VolumeID == id {
				return jid
			}
		}
	}
	return ""
}

// prepareVolumes makes (or finds) the volumes hj binds and adds their
// mounts to spec, whose user owns a volume it makes.
func (a *Agent) prepareVolumes(hj *api.HostJob, spec *runtime.Spec) error {
	if len(hj.Config.Volumes) == 0 {
		return nil
	}
	a.mu.Lock()
	for _, v := range hj.Config.Volumes {
		if other := a.volumeUserLocked(v.VolumeID, hj.ID); other != "" {
			a.mu.Unlock()
			return api.Conflict("volume %s is in use by job %s: one job at a time may use a volume; stop that job first", v.VolumeID, other)
		}
	}
	a.mu.Unlock()
	if err := os.MkdirAll(a.volumesDir(), 0o700); err != nil {
		return fmt.Errorf("make the volumes dir: %w", err)
	}
	for _, v := range hj.Config.Volumes {
		dir := a.volumePath(v.VolumeID)
		rec, err := a.readVolume(v.VolumeID)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			rec = &api.Volume{ID: v.VolumeID, Type: api.VolumeTypeData, CreatedAt: time.Now().UTC()}
			if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("make volume %s: %w", v.VolumeID, err)
			}
			if err := os.Chown(dir, int(spec.UID), int(spec.GID)); err != nil {
				return fmt.Errorf("make volume %s: %w", v.VolumeID, err)
			}
			a.log.Info("volume created", "volume", v.VolumeID, "job", hj.ID)
		case err != nil:
			return err
		}
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("volume %s: its directory is gone (%w); delete the volume to start afresh", v.VolumeID, err)
		}
		rec.Path = v.Target
		rec.DeleteOnStop = v.DeleteOnStop
		rec.JobID = hj.ID
		rec.AppID = hj.Metadata[api.JobMetaApp]
		rec.AppName = hj.Metadata[api.JobMetaAppName]
		rec.ReleaseID = hj.Metadata[api.JobMetaRelease]
		rec.JobType = hj.Metadata[api.JobMetaProcessType]
		if err := a.writeVolume(rec); err != nil {
			return err
		}
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: dir, Target: v.Target, Writeable: v.Writeable})
	}
	return nil
}

func (a *Agent) readVolume(id string) (*api.Volume, error) {
	b, err := os.ReadFile(a.volumePath(id) + ".json")
	if err != nil {
		return nil, err
	}
	v := &api.Volume{}
	if err := json.Unmarshal(b, v); err != nil {
		return nil, fmt.Errorf("read volume %s: %w", id, err)
	}
	return v, nil
}

func (a *Agent) writeVolume(v *api.Volume) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	p := a.volumePath(v.ID) + ".json"
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("record volume %s: %w", v.ID, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("record volume %s: %w", v.ID, err)
	}
	return nil
}

// ListVolumes returns the host's volumes, by id.
func (a *Agent) ListVolumes() ([]*api.Volume, error) {
	ents, err := os.ReadDir(a.volumesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return []*api.Volume{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	out := []*api.Volume{}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !volumeIDRe.MatchString(id) {
			continue
		}
		v, err := a.volume(id)
		if err != nil {
			a.log.Warn("read volume", "volume", id, "err", err)
			continue
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(x, y *api.Volume) int { return strings.Compare(x.ID, y.ID) })
	return out, nil
}

// Volume returns one volume, with its size and whether a job uses it.
func (a *Agent) Volume(id string) (*api.Volume, error) {
	if !volumeIDRe.MatchString(id) {
		return nil, api.NotFound("volume %q not found on host %s", id, a.cfg.ID)
	}
	v, err := a.volume(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, api.NotFound("volume %q not found on host %s", id, a.cfg.ID)
	}
	return v, err
}

func (a *Agent) volume(id string) (*api.Volume, error) {
	v, err := a.readVolume(id)
	if err != nil {
		return nil, err
	}
	v.HostID = a.cfg.ID
	a.mu.Lock()
	v.InUse = a.volumeUserLocked(id, "") != ""
	a.mu.Unlock()
	v.Size = a.volumeSize(id)
	return v, nil
}

// volumeSizeTTL is how long a volume's measured size is reported before
// it is measured again: the scheduler lists every host's volumes on each
// sync, and a build cache volume holds thousands of files.
const volumeSizeTTL = time.Minute

type volSize struct {
	bytes int64
	at    time.Time
}

// volumeSize is the size of volume id, measured at most once per
// volumeSizeTTL.
func (a *Agent) volumeSize(id string) int64 {
	a.volSizeMu.Lock()
	s, ok := a.volSizes[id]
	a.volSizeMu.Unlock()
	if ok && time.Since(s.at) < volumeSizeTTL {
		return s.bytes
	}
	n := dirSize(a.volumePath(id))
	a.volSizeMu.Lock()
	if a.volSizes == nil {
		a.volSizes = map[string]volSize{}
	}
	a.volSizes[id] = volSize{n, time.Now()}
	a.volSizeMu.Unlock()
	return n
}

// DeleteVolume removes a volume and its files. A volume a running job
// uses is a conflict.
func (a *Agent) DeleteVolume(id string) error {
	if _, err := a.Volume(id); err != nil {
		return err
	}
	a.mu.Lock()
	user := a.volumeUserLocked(id, "")
	a.mu.Unlock()
	if user != "" {
		return api.Conflict("volume %s is in use by job %s: stop the job (scale its process type to 0) first", id, user)
	}
	return a.removeVolume(id)
}

func (a *Agent) removeVolume(id string) error {
	if err := os.RemoveAll(a.volumePath(id)); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	if err := os.Remove(a.volumePath(id) + ".json"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	a.volSizeMu.Lock()
	delete(a.volSizes, id)
	a.volSizeMu.Unlock()
	a.log.Info("volume deleted", "volume", id)
	return nil
}

// releaseVolumes removes the delete_on_stop volumes of a job that ended.
func (a *Agent) releaseVolumes(hj *api.HostJob) {
	for _, v := range hj.Config.Volumes {
		if !v.DeleteOnStop {
			continue
		}
		if err := a.removeVolume(v.VolumeID); err != nil {
			a.log.Error("delete volume", "volume", v.VolumeID, "err", err)
		}
	}
}

// dirSize is the bytes the regular files under dir take (0 when it
// cannot be read).
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
