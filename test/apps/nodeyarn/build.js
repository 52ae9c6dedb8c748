// Runs at build time (the build script): writes a file the server reads,
// with a devDependency, which the build installs and then prunes.
const fs = require('fs');
const semver = require('semver');
fs.writeFileSync('built.txt', `built at build time with semver ${semver.major(require('semver/package.json').version)}\n`);
