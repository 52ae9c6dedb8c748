// Runs at build time (npm run build): writes a file the server reads.
const fs = require('fs');
fs.writeFileSync('built.txt', 'built at build time\n');
