// index-same.js OLD NEW: exits 0 when the npm cache index NEW
// (_cacache/index-v5) names no key with a content (integrity) that the
// index OLD does not, 1 otherwise. npm gives an entry it reads a new line
// or a new time on every install; that alone changes nothing a build
// reads from the cache. See bin/compile.
"use strict";
const fs = require("fs"), path = require("path");
const pairs = (dir) => {
	const set = new Set();
	const walk = (d) => {
		for (const e of fs.readdirSync(d, { withFileTypes: true })) {
			const p = path.join(d, e.name);
			if (e.isDirectory()) { walk(p); continue; }
			for (const line of fs.readFileSync(p, "utf8").split("\n")) {
				const tab = line.indexOf("\t");
				if (tab < 0) continue;
				try {
					const j = JSON.parse(line.slice(tab + 1));
					set.add(j.key + "\0" + j.integrity);
				} catch (e) { set.add("unreadable\0" + line); }
			}
		}
	};
	walk(dir);
	return set;
};
const old = pairs(process.argv[2]);
for (const k of pairs(process.argv[3])) if (!old.has(k)) process.exit(1);
process.exit(0);
