package slugbuilder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// isURL says whether loc names an HTTP(S) resource rather than a path.
func isURL(loc string) bool {
	return strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://")
}

// open reads a path or an HTTP(S) URL. A missing file or a 404 is
// reported as os.ErrNotExist.
func open(ctx context.Context, loc string) (io.ReadCloser, error) {
	if !isURL(loc) {
		f, err := os.Open(loc)
		if err != nil {
			return nil, err
		}
		return f, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return nil, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	switch {
	case res.StatusCode == http.StatusNotFound:
		res.Body.Close()
		return nil, fmt.Errorf("GET %s: %w", loc, os.ErrNotExist)
	case res.StatusCode != http.StatusOK:
		res.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", loc, res.Status)
	}
	return res.Body, nil
}

// store writes what fill writes to a path (atomically, through a temporary
// file) or streams it with an HTTP PUT to a URL.
func store(ctx context.Context, loc string, fill func(io.Writer) error) error {
	_, err := storeTagged(ctx, loc, fill)
	return err
}

// storeTagged is store that also returns the sha256 the server's reply
// names in its ETag ("" for a path, or a server that gives none).
func storeTagged(ctx context.Context, loc string, fill func(io.Writer) error) (string, error) {
	if !isURL(loc) {
		if err := os.MkdirAll(filepath.Dir(loc), 0o755); err != nil {
			return "", err
		}
		f, err := os.CreateTemp(filepath.Dir(loc), ".tmp-"+filepath.Base(loc))
		if err != nil {
			return "", err
		}
		defer os.Remove(f.Name())
		if err := fill(f); err != nil {
			f.Close()
			return "", err
		}
		if err := f.Close(); err != nil {
			return "", err
		}
		return "", os.Rename(f.Name(), loc)
	}
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, loc, pr)
	if err != nil {
		return "", err
	}
	fillErr := make(chan error, 1)
	go func() {
		err := fill(pw)
		pw.CloseWithError(err)
		fillErr <- err
	}()
	res, err := http.DefaultClient.Do(req)
	pr.CloseWithError(errors.New("request done"))
	ferr := <-fillErr
	if err != nil {
		return "", fmt.Errorf("PUT %s: %w", loc, err)
	}
	defer res.Body.Close()
	if ferr != nil {
		return "", ferr
	}
	if res.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return "", fmt.Errorf("PUT %s: %s: %s", loc, res.Status, strings.TrimSpace(string(body)))
	}
	return etagSHA(res.Header.Get("ETag")), nil
}
