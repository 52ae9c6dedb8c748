package api

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
