// The Node.js peer: the `http` module, one process, files streamed with
// fs.createReadStream().pipe(res) as Node's own guides do it. Node has no built-in Range or
// compression for `http`; the single-range parsing below is the few lines every "stream a video
// with Node" tutorial adds, and /json is sent uncompressed.
//
// usage: node server.js PORT DATA_DIR
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');

const port = Number(process.argv[2]);
const data = process.argv[3];
const hello = Buffer.from('Hello, World!');
const payload = fs.readFileSync(path.join(data, 'payload.json'));

function sendFile(req, res) {
  const name = req.url.slice('/files/'.length);
  if (name.includes('/') || name === '' || name === '.' || name === '..') {
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
    return;
  }
  const file = path.join(data, 'files', name);
  fs.stat(file, (err, st) => {
    if (err || !st.isFile()) {
      res.writeHead(404, { 'Content-Length': 0 });
      res.end();
      return;
    }
    let start = 0;
    let end = st.size - 1;
    let status = 200;
    const headers = { 'Content-Type': 'application/octet-stream', 'Accept-Ranges': 'bytes' };
    const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
    if (m && Number(m[1]) < st.size) {
      start = Number(m[1]);
      end = m[2] ? Math.min(Number(m[2]), st.size - 1) : st.size - 1;
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
    }
    headers['Content-Length'] = end - start + 1;
    res.writeHead(status, headers);
    fs.createReadStream(file, { start, end }).pipe(res);
  });
}

const server = http.createServer((req, res) => {
  if (req.url === '/') {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': hello.length });
    res.end(hello);
  } else if (req.url === '/json') {
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': payload.length });
    res.end(payload);
  } else if (req.url.startsWith('/files/')) {
    sendFile(req, res);
  } else {
    res.writeHead(404, { 'Content-Length': 0 });
    res.end();
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${port}`);
});
