/**
 * `npm run demo`: the proxy, for real, in front of a real local Dovecot.
 * `npm run demo -- --upstream cyrus`: the same in front of a real Cyrus 3.6
 * with its own JMAP server, where the whole RFC 9698 promise holds.
 *
 * Installs the server if it is missing (root only), starts a throwaway
 * instance on a free loopback port, starts the built proxy (dist/cli.js) in
 * front of it, shows one client session through the proxy, and keeps both
 * running until Ctrl-C so you can connect yourself.
 */

import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { ensureDovecotInstalled, freePort, startDovecot } from '../test/harness/dovecot.js';
import { ensureCyrusInstalled, startCyrus } from '../test/harness/cyrus.js';

const JMAP_URL = 'https://jmap.example.test/.well-known/jmap';
const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

function say(text = ''): void {
  process.stdout.write(`${text}\n`);
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

/** A tiny line-oriented client that prints the conversation; returns the GETJMAPACCESS URL, if any. */
async function showSession(port: number): Promise<string | undefined> {
  const socket = net.connect({ host: '127.0.0.1', port });
  let buffer = '';
  let lastShown = '';
  const waiters: Array<() => void> = [];
  socket.setEncoding('latin1');
  socket.on('data', (text: string) => {
    buffer += text;
    waiters.splice(0).forEach((w) => w());
  });
  const until = async (pattern: RegExp): Promise<void> => {
    const deadline = Date.now() + 10_000;
    while (!pattern.test(buffer)) {
      if (Date.now() > deadline) throw new Error(`no answer matching ${pattern}`);
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
    for (const line of buffer.split('\r\n').filter(Boolean)) say(`  S: ${line}`);
    lastShown = buffer;
    buffer = '';
  };
  const send = (line: string, shown = line) => {
    say(`  C: ${shown}`);
    socket.write(`${line}\r\n`);
  };
  await until(/\r\n/);
  send('a CAPABILITY');
  await until(/^a (OK|NO|BAD)/m);
  send('b LOGIN alice alicepw', 'b LOGIN alice ********');
  await until(/^b (OK|NO|BAD)/m);
  send('c CAPABILITY');
  await until(/^c (OK|NO|BAD)/m);
  send('d GETJMAPACCESS');
  await until(/^d (OK|NO|BAD)/m);
  const url = /^\* JMAPACCESS "([^"]*)"/m.exec(lastShown)?.[1];
  send('e LOGOUT');
  await until(/^e (OK|NO|BAD)/m);
  socket.destroy();
  return url;
}

interface Upstream {
  name: string;
  port: number;
  dir: string;
  jmapUrl: string;
  proxyFlags: string[];
  stop(): Promise<void>;
}

async function startUpstream(kind: string): Promise<Upstream> {
  if (kind === 'cyrus') {
    await ensureCyrusInstalled();
    const cyrus = await startCyrus();
    say(`Cyrus 3.6 (real, throwaway) on 127.0.0.1:${cyrus.port}, its JMAP server on 127.0.0.1:${cyrus.httpPort}`);
    say('Cyrus offers OBJECTID and shares its password database with its JMAP server, so the');
    say('proxy runs with its defaults; --allow-insecure-jmap-url only because the lab JMAP is plain HTTP.');
    return {
      name: 'Cyrus',
      port: cyrus.port,
      dir: cyrus.dir,
      jmapUrl: cyrus.jmapSessionUrl,
      proxyFlags: ['--allow-insecure-jmap-url'],
      stop: () => cyrus.stop(),
    };
  }
  await ensureDovecotInstalled();
  const dovecot = await startDovecot();
  say(`Dovecot (real, throwaway) on 127.0.0.1:${dovecot.port}`);
  say();
  say('Note: Dovecot 2.3 does not offer OBJECTID (RFC 8474), which RFC 9698 requires of a');
  say('JMAPACCESS server, so by default (--objectid require) the proxy would never grant it.');
  say('The demo runs with --objectid assume to show the mechanism anyway; see the README.');
  say('(npm run demo -- --upstream cyrus shows it in front of a server with JMAP.)');
  return {
    name: 'Dovecot',
    port: dovecot.port,
    dir: dovecot.dir,
    jmapUrl: JMAP_URL,
    proxyFlags: ['--objectid', 'assume'],
    stop: () => dovecot.stop(),
  };
}

/** With the URL GETJMAPACCESS gave and the same credentials, fetch the JMAP session. */
async function showJmapSession(url: string): Promise<void> {
  const response = await fetch(url, { headers: { Authorization: `Basic ${Buffer.from('alice:alicepw').toString('base64')}` } });
  const session = (await response.json()) as { username?: string; apiUrl?: string; capabilities?: Record<string, unknown> };
  say(`GET ${url} with alice's IMAP password -> HTTP ${response.status} from ${response.url}`);
  say(`  username ${session.username}, apiUrl ${session.apiUrl}, capabilities ${Object.keys(session.capabilities ?? {}).join(' ')}`);
}

async function main(): Promise<void> {
  const flag = process.argv.indexOf('--upstream');
  const kind = flag === -1 ? 'dovecot' : (process.argv[flag + 1] ?? '');
  if (kind !== 'dovecot' && kind !== 'cyrus') throw new Error(`--upstream must be dovecot or cyrus, got "${kind}"`);
  say(`== jmapaccess-proxy demo (${kind}) ==`);
  const upstream = await startUpstream(kind);
  say(`Users alice/alicepw and bob/bobpw; server files in ${upstream.dir}`);
  const port = (await portIsFree(1143)) ? 1143 : await freePort();
  say();
  const args = [
    CLI,
    '--listen', `127.0.0.1:${port}`,
    '--upstream', `imap://127.0.0.1:${upstream.port}`,
    '--jmap-url', upstream.jmapUrl,
    ...upstream.proxyFlags,
    '--log-level', process.env.JMAPACCESS_PROXY_LOG_LEVEL ?? 'info',
  ];
  say(`$ node ${args.join(' ')}`);
  const proxy = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let logs = '';
  proxy.stdout.setEncoding('utf8');
  proxy.stdout.on('data', (text: string) => {
    logs += text;
  });
  const stopAll = async (code: number) => {
    proxy.kill('SIGTERM');
    await upstream.stop();
    process.exit(code);
  };
  process.on('SIGINT', () => void stopAll(0));
  process.on('SIGTERM', () => void stopAll(0));
  proxy.on('exit', (code) => {
    say(`proxy exited (${code}); logs:\n${logs}`);
    void stopAll(code === 0 ? 0 : 1);
  });
  const deadline = Date.now() + 10_000;
  while (!logs.includes('"listening"')) {
    if (Date.now() > deadline) throw new Error(`the proxy did not start:\n${logs}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  say();
  say(`A client session through the proxy (127.0.0.1:${port}):`);
  const url = await showSession(port);
  if (url && kind === 'cyrus') {
    say();
    await showJmapSession(url);
  }
  say();
  say('What the proxy logged for it (JSON lines; passwords never appear):');
  for (const line of logs.split('\n').filter((l) => l.includes('"conn"'))) say(`  ${line}`);
  say();
  say('Both servers keep running. Try it yourself:');
  say(`  python3 -c "import imaplib; m=imaplib.IMAP4('127.0.0.1', ${port}); print(m.login('alice','alicepw')); print(m.capabilities)"`);
  say(`  or: nc -C 127.0.0.1 ${port}   then: a LOGIN alice alicepw / b GETJMAPACCESS / c LOGOUT`);
  say(`Proxy 127.0.0.1:${port} -> ${upstream.name} 127.0.0.1:${upstream.port}. Press Ctrl-C to stop both.`);
  proxy.stdout.on('data', (text: string) => process.stdout.write(text));
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${(err as Error).message}\n`);
  process.exit(1);
});
