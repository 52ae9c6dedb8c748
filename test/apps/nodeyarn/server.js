// The yarn sample app: answers HTTP on $PORT using its dependency, which
// yarn installed (as its files in node_modules show).
const http = require('http');
const fs = require('fs');
const ms = require('ms');

const built = fs.readFileSync(__dirname + '/built.txt', 'utf8').trim();
const by = fs.existsSync(__dirname + '/node_modules/.pnpm') ? 'pnpm'
  : fs.existsSync(__dirname + '/node_modules/.yarn-integrity') ? 'yarn' : 'npm';
const dev = fs.existsSync(__dirname + '/node_modules/semver') ? 'kept' : 'pruned';
const port = process.env.PORT || 8080;
http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from the node app ${process.version} ${ms(60000)} ${built}, installed by ${by}, devDependencies ${dev}\n`);
}).listen(port);
