package slugbuilder

// RestoreCache extracts a build cache blob for the external tests.
var RestoreCache = restoreChunks
