// What a Node service picks instead of enrich: `dataloader` batching `ioredis` MGETs, the
// activities parsed with JSON.parse and written with JSON.stringify, a page of 25 at a time.
//
//   node loader.js REDIS_URL INPUT OUTPUT [--fresh-loader] [--namespace NS] [--page 25]
//
// With --fresh-loader each page gets a loader of its own (DataLoader's advice for a request
// scoped cache); otherwise one loader, and its cache, serves the whole job. Users are read
// from the keys enrich writes (NS:user:ID, the user's JSON); a user that is not there becomes
// the same ReferenceNotFound object enrich writes, so the outputs can be compared byte for
// byte. Only top-level "SU:" strings are references, as with enrich's default depth.
'use strict';
const fs = require('fs');
const readline = require('readline');
const DataLoader = require('dataloader');
const Redis = require('ioredis');

const args = process.argv.slice(2);
const [url, input, output] = args;
const option = (name, fallback) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : fallback;
};
const fresh = args.includes('--fresh-loader');
const prefix = `${option('--namespace', 'enrich')}:user:`;
const pageSize = Number(option('--page', '25'));

const redis = new Redis(url);
const newLoader = () =>
    new DataLoader(async (ids) => {
        const values = await redis.mget(ids.map((id) => prefix + id));
        return values.map((v) => (v === null ? null : JSON.parse(v)));
    });

const missing = (id) => ({
    error: 'ReferenceNotFound',
    reference: `SU:${id}`,
    reference_type: 'user',
    id,
});

async function enrichPage(loader, lines) {
    const docs = lines.map((line) => JSON.parse(line));
    const sites = [];
    for (const doc of docs) {
        for (const [key, value] of Object.entries(doc)) {
            if (typeof value === 'string' && value.startsWith('SU:')) {
                sites.push([doc, key, value.slice(3)]);
            }
        }
    }
    const users = await Promise.all(sites.map(([, , id]) => loader.load(id)));
    sites.forEach(([doc, key, id], i) => {
        doc[key] = users[i] === null ? missing(id) : users[i];
    });
    return docs.map((doc) => JSON.stringify(doc)).join('\n') + '\n';
}

async function main() {
    // A page's output (some 17 KB) is over the default buffer of 16 KiB: every page would
    // wait for its write to reach the file before the next page began. With room for several
    // pages the writes overlap the work, and backpressure still bounds what is buffered.
    const out = fs.createWriteStream(output, { highWaterMark: 1 << 20 });
    const lines = readline.createInterface({
        input: fs.createReadStream(input),
        crlfDelay: Infinity,
    });
    const shared = newLoader();
    let page = [];
    const flush = async () => {
        const text = await enrichPage(fresh ? newLoader() : shared, page);
        page = [];
        if (!out.write(text)) {
            await new Promise((resolve) => out.once('drain', resolve));
        }
    };
    for await (const line of lines) {
        if (line.length === 0) continue;
        page.push(line);
        if (page.length === pageSize) await flush();
    }
    if (page.length > 0) await flush();
    await new Promise((resolve, reject) => out.end((err) => (err ? reject(err) : resolve())));
    redis.disconnect();
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
