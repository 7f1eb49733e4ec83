// HEALTHCHECK of the container image: exit 0 if GET /healthz on the proxy's
// metrics listener answers 2xx within 3 s, else exit 1. The address comes
// from JMAPACCESS_PROXY_METRICS_LISTEN (HOST:PORT, [IPv6]:PORT, :PORT or
// PORT); a wildcard host (0.0.0.0, ::, empty) is checked on loopback.
const listen = process.env.JMAPACCESS_PROXY_METRICS_LISTEN || '0.0.0.0:9090';
const m = /^(?:(?:\[([^\]]*)\]|([^:]*)):)?(\d+)$/.exec(listen.trim());
if (!m) {
  console.error(`healthcheck: cannot parse JMAPACCESS_PROXY_METRICS_LISTEN=${JSON.stringify(listen)}`);
  process.exit(1);
}
let host = m[1] ?? m[2] ?? '';
if (host === '' || host === '0.0.0.0' || host === '*') host = '127.0.0.1';
else if (host === '::') host = '[::1]';
else if (host.includes(':')) host = `[${host}]`;
const url = `http://${host}:${m[3]}/healthz`;
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
  if (!res.ok) console.error(`healthcheck: ${url} answered ${res.status}`);
  process.exit(res.ok ? 0 : 1);
} catch (err) {
  console.error(`healthcheck: ${url}: ${err?.cause?.message ?? err?.message ?? err}`);
  process.exit(1);
}
