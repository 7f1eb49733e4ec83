/**
 * --workers N through the built CLI, in front of a REAL Dovecot: sessions
 * spread over the workers and all served correctly, /metrics added up over
 * the workers by the primary, SIGHUP relayed, SIGTERM draining with the
 * grace period, a terminal's Ctrl-C (SIGINT to the whole process group)
 * treated as one signal, a killed worker replaced, a crash loop given up,
 * and bad values refused.
 */

import { ensureBuilt, CLI, ROOT } from '../harness/build.js';
import { cleanEnv, logLines } from '../harness/cli-process.js';
import t, { type Test } from 'tap';
import net from 'node:net';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { freePort } from '../harness/dovecot.js';
import { dovecotFor, getJmapAccessAnswer, JMAP_URL, rawClient, rawLogin, sleep, waitFor, type Dovecot, type RawClient } from './helpers.js';

type LogLine = Record<string, unknown>;

interface Cluster {
  child: ChildProcess;
  port: number;
  metricsPort: number;
  logs(): LogLine[];
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits for a log line matching `match` (after `skip` matching lines) and returns it. */
  waitLog(match: (l: LogLine) => boolean, what: string, timeoutMs?: number): Promise<LogLine>;
  metrics(): Promise<string>;
  get(path: string): Promise<{ status: number; body: string }>;
  /** Worker slot -> pid, from the workers' latest `listening` lines. */
  pids(): Map<number, number>;
}

let dovecot: Dovecot;

t.before(async () => {
  ensureBuilt();
  dovecot = await dovecotFor(t);
});

/** The CLI with --workers 2 (unless `args` says otherwise), started and waited for until every worker listens. */
async function startCluster(
  t: Test,
  args: string[] = [],
  options: { detached?: boolean; waitFor?: string | null; port?: number } = {},
): Promise<Cluster> {
  const port = options.port ?? (await freePort());
  const metricsPort = await freePort();
  const child = spawn(
    process.execPath,
    [
      CLI,
      '--upstream', `imap://127.0.0.1:${dovecot.port}`,
      '--jmap-url', JMAP_URL,
      '--objectid', 'assume', // Dovecot 2.3 has no OBJECTID; the grant is what is checked
      '--listen', `127.0.0.1:${port}`,
      '--metrics-listen', `127.0.0.1:${metricsPort}`,
      '--workers', '2',
      ...args,
    ],
    { cwd: ROOT, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: options.detached ?? false },
  );
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })),
  );
  const logs = (): LogLine[] => logLines(stdout);
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL'); // the workers exit when their primary goes away
    await exited;
  });
  const waitLog = async (match: (l: LogLine) => boolean, what: string, timeoutMs = 10_000) => {
    await waitFor(() => logs().some(match), `${what}; log so far:\n${stdout}${stderr}`, timeoutMs);
    return logs().find(match) as LogLine;
  };
  const get = async (path: string) => {
    const response = await fetch(`http://127.0.0.1:${metricsPort}${path}`);
    return { status: response.status, body: await response.text() };
  };
  const pids = () => {
    const map = new Map<number, number>();
    for (const l of logs()) if (l.msg === 'listening' && typeof l.worker === 'number') map.set(l.worker, l.pid as number);
    return map;
  };
  const cluster: Cluster = {
    child,
    port,
    metricsPort,
    logs,
    stderr: () => stderr,
    exited,
    waitLog,
    get,
    metrics: async () => (await get('/metrics')).body,
    pids,
  };
  const ready = options.waitFor === undefined ? 'all workers listening' : options.waitFor;
  if (ready) await waitLog((l) => l.msg === ready, `"${ready}"`);
  return cluster;
}

/** A logged-in session through the proxy, checked for the JMAPACCESS behaviour on the way. */
async function session(t: Test, port: number, tag: string): Promise<{ client: RawClient; sent: number }> {
  const { client } = await rawClient(t, port);
  let sent = 0;
  const send = (text: string) => {
    sent += Buffer.byteLength(text, 'latin1');
    client.send(text);
  };
  // (rawLogin sends `a LOGIN alice "alicepw"`.)
  sent += 'a LOGIN alice "alicepw"\r\n'.length;
  const login = await rawLogin(client, 'alice', 'alicepw');
  t.match(login, /^a OK \[CAPABILITY [^\]]* JMAPACCESS\]/m, `${tag}: login OK with JMAPACCESS`);
  send('b GETJMAPACCESS\r\n');
  t.equal(await client.response('b'), getJmapAccessAnswer('b', true), `${tag}: GETJMAPACCESS answered`);
  return { client, sent };
}

async function logout(client: RawClient): Promise<number> {
  const text = 'z LOGOUT\r\n';
  client.send(text);
  await client.response('z');
  await client.waitClosed(5000);
  return text.length;
}

/** The value of one sample (`name{labels} value`) in a Prometheus text, or NaN. */
function sample(text: string, series: string): number {
  const escaped = series.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const m = new RegExp(`^${escaped} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('bad --workers values: exit status 2 and one line naming the flag', async (t) => {
  const base = ['--upstream', 'imap://127.0.0.1:143', '--jmap-url', JMAP_URL];
  const cases: Array<{ args: string[]; env?: Record<string, string> }> = [
    { args: ['--workers', '0'] },
    { args: ['--workers', '65'] },
    { args: ['--workers', 'two'] },
    { args: ['--workers', '1.5'] },
    { args: ['--workers', '-1'] },
    { args: ['--workers', ''] },
    { args: [], env: { JMAPACCESS_PROXY_WORKERS: 'lots' } },
  ];
  for (const c of cases) {
    const r = spawnSync(process.execPath, [CLI, ...base, ...c.args], { cwd: ROOT, env: cleanEnv(c.env), encoding: 'utf8', timeout: 10_000 });
    const name = JSON.stringify(c.args.length ? c.args : c.env);
    t.equal(r.status, 2, `${name}: exit status`);
    t.match(r.stderr, /^jmapaccess-proxy: --workers: must be a whole number from 1 to 64, or auto; got "[^"\n]*"\n/, `${name}: explains`);
    t.equal(r.stdout, '', `${name}: nothing on stdout`);
  }
  const help = spawnSync(process.execPath, [CLI, '--help'], { cwd: ROOT, env: cleanEnv(), encoding: 'utf8' });
  t.match(help.stdout, /(^|\s)--workers\s/, '--help lists --workers');
});

t.test('--check stays one process with --workers auto', async (t) => {
  const r = spawnSync(
    process.execPath,
    [CLI, '--check', '--upstream', `imap://127.0.0.1:${dovecot.port}`, '--jmap-url', JMAP_URL, '--workers', 'auto'],
    { cwd: ROOT, env: cleanEnv(), encoding: 'utf8', timeout: 20_000 },
  );
  t.equal(r.status, 0, 'exit 0: the upstream answers');
  const report = JSON.parse(r.stdout) as Record<string, unknown>;
  t.equal(report.ok, true, 'a single JSON report on stdout');
  t.notMatch(r.stdout + r.stderr, /starting workers|worker started/, 'no worker forked');
});

t.test('sessions spread over both workers, metrics added up, SIGHUP relayed, a killed worker replaced', async (t) => {
  const cluster = await startCluster(t);
  const first = cluster.pids();
  t.same([...first.keys()].sort(), [1, 2], 'two workers listen');
  t.not(first.get(1), first.get(2), 'in two processes');
  t.notOk([...first.values()].includes(cluster.child.pid as number), 'neither is the primary');
  const starting = cluster.logs().find((l) => l.msg === 'starting workers');
  t.match(starting, { workers: 2, schedulingPolicy: 'rr' });

  // 12 sessions, 3 at a time.
  const N = 12;
  let sentClosed = 0;
  for (let batch = 0; batch < N / 3; batch++) {
    const sessions = await Promise.all([0, 1, 2].map((i) => session(t, cluster.port, `session ${batch * 3 + i}`)));
    for (const s of sessions) sentClosed += s.sent + (await logout(s.client));
  }
  const opened = cluster.logs().filter((l) => l.msg === 'connection opened');
  t.equal(opened.length, N, 'every connection logged once');
  const byWorker = new Map<unknown, number>();
  for (const l of opened) byWorker.set(l.worker, (byWorker.get(l.worker) ?? 0) + 1);
  t.same([...byWorker.keys()].sort(), [1, 2], 'connections landed on both workers');
  t.ok(opened.every((l) => l.pid === first.get(l.worker as number)), 'each line carries its worker\'s pid');

  // One session stays open through the scrape: its bytes are read at scrape time.
  const open = await session(t, cluster.port, 'open session');
  let metrics = await cluster.metrics();
  t.equal(sample(metrics, 'jmapaccess_proxy_connections_total{listener="plain"}'), N + 1, 'connections_total: summed over the workers');
  t.equal(sample(metrics, 'jmapaccess_proxy_connections_open'), 1, 'connections_open: summed');
  t.equal(sample(metrics, 'jmapaccess_proxy_logins_total{mechanism="LOGIN",result="OK"}'), N + 1);
  t.equal(sample(metrics, 'jmapaccess_proxy_getjmapaccess_total{answer="OK"}'), N + 1);
  t.equal(sample(metrics, 'jmapaccess_proxy_client_bytes_received_total'), sentClosed + open.sent, 'bytes from clients: ended and live sessions, all workers');
  const perWorker = [1, 2].map((w) => sample(metrics, `jmapaccess_proxy_worker_connections_total{worker="${w}"}`));
  t.equal(perWorker[0]! + perWorker[1]!, N + 1, 'per-worker series add up');
  t.ok(perWorker.every((n) => n > 0), `both workers counted connections (${perWorker.join(', ')})`);
  t.equal(sample(metrics, 'jmapaccess_proxy_workers{state="listening"}'), 2);
  t.equal(sample(metrics, 'jmapaccess_proxy_process_cpu_seconds_total') > 0, true, 'process metrics of the workers');
  t.equal((metrics.match(/^# TYPE jmapaccess_proxy_connections_total /gm) ?? []).length, 1, 'one family per metric');
  t.same(await cluster.get('/readyz'), { status: 200, body: 'ready\n' });
  t.same(await cluster.get('/healthz'), { status: 200, body: 'ok\n' });

  sentClosed += open.sent + (await logout(open.client));

  // SIGHUP: each worker logs the configuration once.
  cluster.child.kill('SIGHUP');
  await cluster.waitLog((l) => l.msg === 'SIGHUP: forwarded to the workers', 'the primary relays SIGHUP');
  await waitFor(() => cluster.logs().filter((l) => l.msg === 'SIGHUP: effective configuration').length === 2, 'both workers to log their configuration');
  const hup = cluster.logs().filter((l) => l.msg === 'SIGHUP: effective configuration');
  t.same(hup.map((l) => l.worker).sort(), [1, 2], 'from each worker');
  t.match(hup[0], { config: { workers: 2, maxConnections: 10_000 }, maxConnectionsThisWorker: 5000 });
  t.ok([first.get(1), first.get(2)].every((pid) => alive(pid as number)), 'SIGHUP killed no worker');

  // A worker killed outright is replaced; the counters it had reported stay in the sums.
  const before = sample(await cluster.metrics(), 'jmapaccess_proxy_connections_total{listener="plain"}');
  process.kill(first.get(1) as number, 'SIGKILL');
  const died = await cluster.waitLog((l) => l.msg === 'worker exited unexpectedly; replacing it', 'the death to be logged');
  t.match(died, { level: 50, worker: 1, pid: first.get(1), signal: 'SIGKILL' });
  await waitFor(() => cluster.pids().get(1) !== first.get(1), 'a new worker 1 to listen', 10_000);
  t.ok(alive(cluster.pids().get(1) as number), 'the replacement runs');
  t.equal(cluster.pids().get(2), first.get(2), 'worker 2 untouched');
  for (let i = 0; i < 4; i++) {
    const s = await session(t, cluster.port, `after the kill ${i}`);
    await logout(s.client);
  }
  metrics = await cluster.metrics();
  t.equal(sample(metrics, 'jmapaccess_proxy_worker_restarts_total'), 1);
  t.equal(sample(metrics, 'jmapaccess_proxy_connections_total{listener="plain"}'), before + 4, 'connections_total did not go down');
  t.ok(sample(metrics, 'jmapaccess_proxy_worker_connections_total{worker="1"}') > 0, 'the new worker 1 serves');
  t.same(await cluster.get('/readyz'), { status: 200, body: 'ready\n' });
});

t.test('--max-connections is for the host: each of 2 workers takes ceil(3 / 2) = 2', async (t) => {
  const cluster = await startCluster(t, ['--max-connections', '3']);
  const greetings: string[] = [];
  // One at a time, so that the primary's round robin alternates: w1, w2, w1, w2, then both are full.
  for (let i = 0; i < 6; i++) greetings.push((await rawClient(t, cluster.port)).greeting);
  const refusedCount = greetings.filter((g) => /^\* BYE \[UNAVAILABLE\] Too many connections/.test(g)).length;
  t.equal(greetings.filter((g) => /^\* OK /.test(g)).length, 4, 'four sessions (2 per worker)');
  t.equal(refusedCount, 2, 'the others refused');
  const metrics = await cluster.metrics();
  t.equal(sample(metrics, 'jmapaccess_proxy_connections_refused_total{reason="max-connections"}'), 2);
  t.equal(sample(metrics, 'jmapaccess_proxy_worker_connections_open{worker="1"}'), 2);
  t.equal(sample(metrics, 'jmapaccess_proxy_worker_connections_open{worker="2"}'), 2);
  t.equal(sample(metrics, 'jmapaccess_proxy_connections_open'), 4);
});

t.test('SIGTERM: workers drain for --shutdown-grace, the session is told BYE, exit 0', async (t) => {
  const cluster = await startCluster(t, ['--shutdown-grace', '1500ms']);
  const pids = [...cluster.pids().values()];
  const { client } = await session(t, cluster.port, 'draining session');
  const started = Date.now();
  cluster.child.kill('SIGTERM');
  await cluster.waitLog((l) => l.msg === 'stopping: no new connections, sessions finishing' && l.worker === undefined, 'the primary to stop');
  await waitFor(() => cluster.logs().filter((l) => l.msg === 'stopping: no new connections, sessions finishing' && l.worker !== undefined).length === 2, 'both workers to drain');
  t.equal((await cluster.get('/readyz')).status, 503, 'not ready while draining');
  t.equal((await cluster.get('/readyz')).body, 'draining\n');
  client.send('n NOOP\r\n');
  t.match(await client.response('n'), /^n OK /m, 'the session goes on during the grace period');
  t.ok(await refused(cluster.port), 'no new connections');
  t.match(await client.readUntil('* BYE', 5000), /\* BYE \[UNAVAILABLE\] Server shutting down/, 'BYE at the end of the grace period');
  const elapsed = Date.now() - started;
  t.ok(elapsed >= 1400, `not before the grace period ended (${elapsed} ms)`);
  const exit = await Promise.race([cluster.exited, sleep(5000).then(() => 'timeout' as const)]);
  t.same(exit, { code: 0, signal: null }, 'the primary exits 0');
  t.ok(pids.every((pid) => !alive(pid)), 'no worker left');
  t.equal(cluster.logs().filter((l) => l.msg === 'worker exited').length, 2);
  t.equal(cluster.stderr(), '');
});

t.test('Ctrl-C (SIGINT to the whole process group) is one signal; a second one stops at once', async (t) => {
  const cluster = await startCluster(t, ['--shutdown-grace', '30s', '--log-level', 'debug'], { detached: true });
  const group = -(cluster.child.pid as number);
  const pids = [...cluster.pids().values()];
  const { client } = await session(t, cluster.port, 'session');
  const busy = cluster.logs().find((l) => l.msg === 'connection opened')?.worker as number;
  process.kill(group, 'SIGINT');
  await waitFor(() => cluster.logs().filter((l) => l.msg === 'stopping: no new connections, sessions finishing').length === 3, 'primary and workers to drain');
  await cluster.waitLog((l) => l.msg === 'signal ignored: workers act on the primary process\'s orders' && l.worker === busy && l.signal === 'SIGINT', 'the busy worker to ignore its own SIGINT');
  await sleep(200);
  t.ok(alive(cluster.pids().get(busy) as number), 'the worker with the session still runs');
  // (The idle worker has nothing to wait for: it exits at once, by the primary's order.)
  t.ok(cluster.logs().filter((l) => l.msg === 'worker exited').every((l) => l.code === 0 && l.signal === undefined), 'no worker died of SIGINT');
  t.notOk(cluster.logs().some((l) => l.msg === 'stopping now'), 'nobody took it for a second signal');
  client.send('n NOOP\r\n');
  t.match(await client.response('n'), /^n OK /m, 'the session goes on');
  const started = Date.now();
  process.kill(group, 'SIGINT');
  t.match(await client.readUntil('* BYE', 5000), /\* BYE \[UNAVAILABLE\] Server shutting down/, 'second Ctrl-C: BYE now');
  const exit = await Promise.race([cluster.exited, sleep(5000).then(() => 'timeout' as const)]);
  t.same(exit, { code: 0, signal: null }, 'exit 0');
  t.ok(Date.now() - started < 5000, 'well before the 30 s grace');
  t.ok(pids.every((pid) => !alive(pid)), 'no worker left');
});

t.test('a worker that cannot listen stops everything: exit 1', async (t) => {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const { port } = blocker.address() as net.AddressInfo;
  const cluster = await startCluster(t, [], { waitFor: null, port });
  const exit = await Promise.race([cluster.exited, sleep(10_000).then(() => 'timeout' as const)]);
  t.same(exit, { code: 1, signal: null });
  const logs = cluster.logs();
  t.ok(logs.some((l) => l.msg === 'cannot listen' && l.level === 60 && /EADDRINUSE/.test(String(l.err)) && l.worker !== undefined), 'the worker says why');
  t.ok(logs.some((l) => l.msg === 'a worker failed to start; stopping' && l.level === 60), 'the primary gives up at once');
  t.notOk(logs.some((l) => l.msg === 'worker exited unexpectedly; replacing it'), 'no retry');
});

t.test('workers that keep dying: replaced with a growing delay, then the primary gives up with exit 1', async (t) => {
  const cluster = await startCluster(t);
  const killed = new Set<number>();
  const deadline = Date.now() + 20_000;
  while (cluster.child.exitCode === null && Date.now() < deadline) {
    for (const pid of cluster.pids().values()) {
      if (!killed.has(pid) && alive(pid)) {
        killed.add(pid);
        process.kill(pid, 'SIGKILL');
      }
    }
    await sleep(20);
  }
  const exit = await Promise.race([cluster.exited, sleep(5000).then(() => 'timeout' as const)]);
  t.same(exit, { code: 1, signal: null }, 'exit 1');
  const logs = cluster.logs();
  const delays = logs.filter((l) => l.msg === 'worker exited unexpectedly; replacing it').map((l) => l.restartInMs);
  t.same(delays, [250, 500, 1000, 2000], 'backoff doubles');
  t.match(logs.find((l) => l.msg === 'workers keep exiting; giving up'), { level: 60, crashes: 5, withinSeconds: 60 });
  await waitFor(() => [...killed].every((pid) => !alive(pid)), 'workers gone', 5000);
  t.ok([...cluster.pids().values()].every((pid) => !alive(pid)), 'no worker left behind');
});
