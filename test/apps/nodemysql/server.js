// The Node.js MySQL sample app: POST /rows?v=X inserts a row, GET / lists
// the rows, using DATABASE_URL through the mysql2 package.
const http = require('http');
const mysql = require('mysql2/promise');

const pool = process.env.DATABASE_URL ? mysql.createPool(process.env.DATABASE_URL) : null;
let ready = null;
// init makes the table once; a failure (the database not reachable yet)
// is retried by the next request.
function init() {
  if (!pool) {
    return Promise.reject(new Error('no DATABASE_URL'));
  }
  if (!ready) {
    ready = pool.query('CREATE TABLE IF NOT EXISTS rows_ (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT NOT NULL)')
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
      await pool.query('INSERT INTO rows_ (v) VALUES (?)', [url.searchParams.get('v') || '']);
    }
    const [rows] = await pool.query('SELECT v FROM rows_ ORDER BY id');
    res.end('rows: ' + rows.map((x) => x.v).join(',') + '\n');
  } catch (e) {
    res.statusCode = 500;
    res.end('db error: ' + e.message + '\n');
  }
}).listen(process.env.PORT || 8080);
