package api

// GitDeployRequest asks gitreceive to deploy an app from a git repository
// it clones itself (Taffy), as POST https://git.DOMAIN/APP.git/deploy.
// The build and deploy are those of a git push.
type GitDeployRequest struct {
	// URL is the repository: https://..., http://..., ssh://... or
	// scp-like user@host:path.
	URL string `json:"url"`
	// Branch is the branch to deploy; empty means the remote's HEAD.
	Branch string `json:"branch,omitempty"`
	// Rev is a commit (hex, at least 7 digits) to deploy instead of the
	// branch's tip; it must be on the branch (on any branch when Branch is
	// empty).
	Rev string `json:"rev,omitempty"`
	// SSHKey is a private key (OpenSSH or PEM) for an SSH URL: the
	// repository's deploy key. It is used for this deploy only.
	SSHKey string `json:"ssh_key,omitempty"`
	// KnownHosts, when set, is an OpenSSH known_hosts file the SSH server's
	// host key must be in; without it any host key is accepted.
	KnownHosts string `json:"known_hosts,omitempty"`
}

// GitDeployEvent is one line of a git deploy's response, a stream of JSON
// objects: Output while the fetch, build and deploy run (what a git push
// shows as "remote:" lines), then one with Done set, and Error when the
// deploy failed.
type GitDeployEvent struct {
	Output string `json:"output,omitempty"`
	Done   bool   `json:"done,omitempty"`
	// Rev is the deployed commit (with Done).
	Rev   string `json:"rev,omitempty"`
	Error string `json:"error,omitempty"`
}
