package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// The etcd keyspace. All control-plane state lives under /flynn/ so the
// controller, scheduler and router are stateless. Values are JSON of the
// named api types.
const (
	// KeyHosts holds host registrations: /flynn/hosts/<host-id> → Host, under a lease.
	KeyHosts = "/flynn/hosts/"
	// KeyHostRecords holds every host that ever registered, with no lease:
	// /flynn/host-records/<host-id> → Host. A host in it but not under
	// KeyHosts is down.
	KeyHostRecords = "/flynn/host-records/"
	// KeyDiscoverd is the service registry's root: services/<svc>/... below it.
	KeyDiscoverd = "/flynn/discoverd/"
	// KeyController is the controller's root: apps/, releases/, artifacts/,
	// formations/, jobs/, deployments/, routes/, providers/, resources/,
	// keys/, events/ below it.
	KeyController = "/flynn/controller/"
	// KeyRoutes holds routes: /flynn/controller/routes/<route-id> → Route.
	// The controller writes them; every router watches this prefix.
	KeyRoutes = KeyController + "routes/"
	// KeyElections holds leader elections: /flynn/elections/<name>.
	KeyElections = "/flynn/elections/"
)

// ServiceToken is the token derived from the cluster token for the
// platform's services that need discoverd but not the host agents: the
// router, the blobstore and the log aggregator hold it. discoverd accepts
// it (for /services only); it is the blobstore's read key, the log
// aggregator's key and the router API's token. It grants nothing on a host
// agent, and the cluster token cannot be found from it.
func ServiceToken(clusterToken string) string {
	mac := hmac.New(sha256.New, []byte(clusterToken))
	mac.Write([]byte("flynn-service-token"))
	return hex.EncodeToString(mac.Sum(nil))
}
