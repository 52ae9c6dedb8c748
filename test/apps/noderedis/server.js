// The Node.js Redis sample app: POST /rows?v=X appends X to a list, GET /
// lists it, using REDIS_URL through the redis package.
const http = require('http');
const { createClient } = require('redis');

let client = null;
// connect makes the client once; a failure (the server not reachable yet)
// is retried by the next request.
async function connect() {
  if (!process.env.REDIS_URL) {
    throw new Error('no REDIS_URL');
  }
  if (!client) {
    const c = createClient({ url: process.env.REDIS_URL });
    c.on('error', (e) => console.error('redis:', e.message));
    client = c.connect().then(() => c).catch((e) => { client = null; c.destroy(); throw e; });
  }
  return client;
}

http.createServer(async (req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  try {
    const c = await connect();
    const url = new URL(req.url, 'http://x');
    if (req.method === 'POST' && url.pathname === '/rows') {
      await c.rPush('rows', url.searchParams.get('v') || '');
    }
    const rows = await c.lRange('rows', 0, -1);
    res.end('rows: ' + rows.join(',') + '\n');
  } catch (e) {
    res.statusCode = 500;
    res.end('db error: ' + e.message + '\n');
  }
}).listen(process.env.PORT || 8080);
