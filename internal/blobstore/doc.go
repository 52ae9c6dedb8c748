// Package blobstore is Flynn's blob store: an HTTP server that stores and
// serves files (slugs, build caches, repo archives, image layers) on any
// path with PUT, GET, HEAD and DELETE, streaming in both directions, with
// range requests, sha256 checksums and directory listings. Storage sits
// behind the Backend interface: the filesystem backend (FS) is the
// default, the S3 backend keeps blobs in an S3-compatible bucket, and Mem
// is for tests.
//
// # Several instances
//
// A cluster runs one blobstore instance on each of several hosts, every
// one registered in discoverd as the service "blobstore". With the
// filesystem backend each instance has its own disk, and the instances
// replicate each other:
//
//   - Replication on write. A PUT is stored locally, then pushed to every
//     other live instance before it is answered. A peer that fails is
//     retried in the background. A DELETE is recorded as a tombstone and
//     propagated the same way. Requests between instances carry
//     ReplicaHeader (and the cluster key), so they are not replicated
//     again.
//   - Read repair. A GET or HEAD for a blob an instance lacks is answered
//     from the peer with the newest copy, and the instance keeps a copy;
//     directory listings are the union of the instances' listings.
//   - Anti-entropy. At start, and then every few minutes, an instance
//     applies the deletes its peers recorded and copies every blob a peer
//     has in a newer version. Before it serves at all it applies the
//     peers' deletes, so an instance that was down does not hand out a
//     blob deleted meanwhile.
//
// Versions. A blob's modification time (api.BlobModifiedHeader, to the
// nanosecond) is its version, and every copy keeps the version of the
// write that made it. Of two versions of a path, the later wins; a delete
// has a version too, later than the blob it removed, and a blob written
// after a delete an instance knows of gets a later version than that
// delete, whatever the clocks say. Concurrent writes of one path on
// different instances are settled the same way (the later clock wins).
//
// # What a client can rely on
//
//   - A PUT that returned 2xx is held by min(MinCopies, N) instances,
//     where N is the number of instances that answered (this one
//     included); api.BlobInfo.Copies says how many. MinCopies is 2 by
//     default. When fewer took it the PUT fails with 503: the blob may be
//     stored, and is replicated later, but repeat the PUT to be sure.
//   - A GET for a blob whose PUT returned 2xx returns it from any
//     instance, as long as one instance that holds it is up. Ranges,
//     conditional requests and checksums work the same on every
//     instance. One exception: an instance that was away while a path
//     was overwritten serves its older version until its first
//     anti-entropy pass, which starts with it, has copied the new one.
//   - A DELETE that returned 2xx is recorded by as many instances as a
//     PUT would be; an instance that was down applies it when it comes
//     back, before it serves, and read repair never brings the blob back.
//     Deletes are remembered for TombstoneTTL (30 days by default): an
//     instance away for longer may bring a deleted blob back.
//   - Reads and writes of one instance are consistent: a GET after a PUT
//     on the same instance sees that PUT.
//
// With the S3 backend the instances share one bucket: there is nothing to
// replicate, and S3 gives the guarantees.
package blobstore
