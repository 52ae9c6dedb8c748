// The Node.js sample app: answers HTTP on $PORT using its npm dependency.
const http = require('http');
const fs = require('fs');
const ms = require('ms');

const built = fs.readFileSync(__dirname + '/built.txt', 'utf8').trim();
const dev = fs.existsSync(__dirname + '/node_modules/semver') ? 'kept' : 'pruned';
const port = process.env.PORT || 8080;
http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end(`hello from the node app ${process.version} ${ms(60000)} ${built}, devDependencies ${dev}\n`);
}).listen(port);
