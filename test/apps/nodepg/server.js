// The Node.js Postgres sample app: POST /rows?v=X inserts a row, GET /
// lists the rows, using DATABASE_URL through the pg package.
const http = require('http');
const { Pool } = require('pg');

const pool = new Pool({ connectionString: process.env.DATABASE_URL });
let ready = null;
// init makes the table once; a failure (the database not reachable yet)
// is retried by the next request.
function init() {
  if (!ready) {
    ready = pool.query('CREATE TABLE IF NOT EXISTS rows (id serial PRIMARY KEY, v text NOT NULL)')
      .catch((e) => { ready = null; throw e; });
  }
  return ready;
}

http.createServer(async (req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  try {
    await init();
    const url = new URL(req.url, 'http://x');
    if (req.method === 'POST' && url.pathname === '/rows') {
      await pool.query('INSERT INTO rows (v) VALUES ($1)', [url.searchParams.get('v') || '']);
    }
    const r = await pool.query('SELECT v FROM rows ORDER BY id');
    res.end('rows: ' + r.rows.map((x) => x.v).join(',') + '\n');
  } catch (e) {
    res.statusCode = 500;
    res.end('db error: ' + e.message + '\n');
  }
}).listen(process.env.PORT || 8080);
