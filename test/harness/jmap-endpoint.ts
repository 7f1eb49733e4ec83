/**
 * A SCRIPTED FAKE JMAP SESSION ENDPOINT over HTTPS, for the failure modes a
 * real JMAP server cannot be made to produce on demand (hang, 403, 500,
 * invalid JSON, a session without a mail account, redirect chains and
 * cross-origin redirects, a huge body). The real thing is tested against
 * Cyrus (test/integration/jmap-verify-cyrus.test.ts).
 *
 * It serves only the session resource. Paths:
 *   /.well-known/jmap      301 to /jmap/ (as Cyrus does)
 *   /jmap/                 the session resource: authenticates (Basic with a
 *                          user's password, or Bearer with one of a user's
 *                          tokens; else 401), then answers by the user's mode
 *   /redirect/N            same-origin redirect chain of N hops ending at
 *                          /jmap/ (statuses cycle through 301 302 303 307 308)
 *   /redirect-loop         302 to itself, forever
 *   /cross-origin          302 to https://localhost:PORT/jmap/ (same server,
 *                          another origin)
 *   /to-http               302 to http://127.0.0.1:PORT/jmap/ (another scheme)
 *   /no-location           302 without Location
 *   /status/NNN            answers NNN without authenticating
 *   /hang                  never answers
 * Anything else is 404.
 *
 * Every request is recorded (path, Authorization header) so tests can count
 * probes (cache hits = no new request) and check Basic vs Bearer.
 */

import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { makeTestCa, type TestCa } from './pki.js';

export type FakeJmapMode =
  /** a valid RFC 8620 session with a mail account */
  | 'session'
  /** accepts the request, never answers */
  | 'hang'
  /** sends 200 and the start of a body, never finishes it */
  | 'hang-body'
  /** 401 even with the right credentials */
  | 'unauthorized'
  /** 403 */
  | 'forbidden'
  /** 500 */
  | 'server-error'
  /** 200 with a body that is not JSON */
  | 'invalid-json'
  /** 200 with JSON that is not a session object (no capabilities, apiUrl...) */
  | 'not-a-session'
  /** 200 with a valid session whose primaryAccounts has no mail account */
  | 'no-mail-account'
  /** 200 with a chunked 2 MiB body (no Content-Length) */
  | 'huge'
  /** 200 announcing Content-Length: 2 MiB */
  | 'huge-declared'
  /** 200 announcing 1000 bytes, then 10 bytes and the connection closed */
  | 'cut-short';

export interface FakeJmapUser {
  password?: string;
  /** Bearer tokens accepted for this user. */
  tokens?: string[];
  /** Default 'session'. */
  mode?: FakeJmapMode;
}

export interface FakeJmapRequest {
  readonly method: string;
  readonly path: string;
  /** The request target as received: the path and any query (`/jmap/?u=alice%40x`). */
  readonly target: string;
  /** The Authorization header as received, or undefined. */
  readonly authorization: string | undefined;
  /** The user it authenticated as, if any. */
  readonly user: string | undefined;
}

export interface FakeJmapEndpoint {
  /** 127.0.0.1 */
  readonly host: string;
  readonly port: number;
  /** https://127.0.0.1:PORT */
  readonly origin: string;
  /** https://127.0.0.1:PORT/.well-known/jmap (a 301 to /jmap/, like Cyrus) */
  readonly wellKnownUrl: string;
  /** https://127.0.0.1:PORT/jmap/ (the session resource itself) */
  readonly sessionUrl: string;
  /** The CA (PEM) that signed the endpoint's certificate (for 127.0.0.1 and localhost). */
  readonly ca: Buffer;
  /** Every request received, in order. */
  readonly requests: readonly FakeJmapRequest[];
  /** Requests received, all or on one path. */
  count(path?: string): number;
  /** `${origin}${path}` */
  url(path: string): string;
  /** Adds or replaces a user. */
  setUser(name: string, user: FakeJmapUser): void;
  setMode(name: string, mode: FakeJmapMode): void;
  /** Forget the recorded requests. */
  reset(): void;
  /** Closes the listener and every connection (hanging ones included). Idempotent. */
  close(): Promise<void>;
}

export interface FakeJmapOptions {
  users?: Record<string, FakeJmapUser>;
  /** A CA to issue the certificate from (else a throwaway one, removed at close). */
  ca?: TestCa;
}

export const DEFAULT_FAKE_USERS: Readonly<Record<string, FakeJmapUser>> = {
  alice: { password: 'alice-secret-pw', tokens: ['alice.token-0123456789'] },
  bob: { password: 'bob-secret-pw', tokens: ['bob.token-9876543210'] },
};

const HUGE = 2 * 1024 * 1024;
const REDIRECT_CYCLE = [301, 302, 303, 307, 308] as const;

/** A session object as Cyrus 3.6 shapes it, for `user`. */
export function fakeSession(user: string, withMail = true): Record<string, unknown> {
  const mail = { maxMailboxesPerEmail: 20, maxSizeAttachmentsPerEmail: 10485760, emailQuerySortOptions: ['receivedAt'], mayCreateTopLevelMailbox: true };
  return {
    capabilities: {
      'urn:ietf:params:jmap:core': { maxSizeUpload: 1073741824, maxConcurrentUpload: 5, maxSizeRequest: 10485760, maxConcurrentRequests: 5, maxCallsInRequest: 50, maxObjectsInGet: 4096, maxObjectsInSet: 4096, collationAlgorithms: [] },
      ...(withMail ? { 'urn:ietf:params:jmap:mail': {} } : {}),
      'urn:ietf:params:jmap:submission': {},
    },
    accounts: {
      [user]: {
        name: user,
        isPersonal: true,
        isReadOnly: false,
        accountCapabilities: withMail ? { 'urn:ietf:params:jmap:mail': mail, 'urn:ietf:params:jmap:submission': {} } : { 'urn:ietf:params:jmap:submission': {} },
      },
    },
    primaryAccounts: withMail ? { 'urn:ietf:params:jmap:mail': user, 'urn:ietf:params:jmap:submission': user } : { 'urn:ietf:params:jmap:submission': user },
    username: user,
    apiUrl: '/jmap/',
    downloadUrl: '/jmap/download/{accountId}/{blobId}/{name}?accept={type}',
    uploadUrl: '/jmap/upload/{accountId}/',
    eventSourceUrl: '/jmap/eventsource/?types={types}&closeafter={closeafter}&ping={ping}',
    state: '0',
  };
}

export async function startFakeJmapEndpoint(options: FakeJmapOptions = {}): Promise<FakeJmapEndpoint> {
  const ownCa = options.ca === undefined;
  const ca = options.ca ?? makeTestCa();
  const cert = ca.issue(`fake-jmap-${process.pid}-${Date.now()}`, ['127.0.0.1', 'localhost']);
  // Copies: setMode() must not change DEFAULT_FAKE_USERS or the caller's objects.
  const users = new Map<string, FakeJmapUser>(
    Object.entries({ ...DEFAULT_FAKE_USERS, ...options.users }).map(([name, u]) => [name, { ...u, tokens: u.tokens && [...u.tokens] }]),
  );
  const requests: FakeJmapRequest[] = [];
  const sockets = new Set<Socket>();
  let port = 0;

  const authenticate = (req: IncomingMessage): string | undefined => {
    const header = req.headers.authorization ?? '';
    const basic = /^Basic ([A-Za-z0-9+/=]+)$/i.exec(header);
    if (basic) {
      const text = Buffer.from(basic[1] as string, 'base64').toString('utf8');
      const colon = text.indexOf(':');
      if (colon < 0) return undefined;
      const name = text.slice(0, colon);
      const user = users.get(name);
      return user?.password !== undefined && user.password === text.slice(colon + 1) ? name : undefined;
    }
    const bearer = /^Bearer (\S+)$/i.exec(header);
    if (bearer) {
      for (const [name, user] of users) if (user.tokens?.includes(bearer[1] as string)) return name;
    }
    return undefined;
  };

  const redirect = (res: ServerResponse, status: number, location: string) => {
    res.writeHead(status, { location, 'content-type': 'text/plain' });
    res.end(`moved to ${location}\n`);
  };
  const json = (res: ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };

  const serveSession = (res: ServerResponse, user: string, mode: FakeJmapMode) => {
    switch (mode) {
      case 'session':
        return json(res, 200, fakeSession(user));
      case 'hang':
        return; // never answered; close() destroys the socket
      case 'hang-body':
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"capabilities":');
        return;
      case 'unauthorized':
        res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"' });
        return res.end();
      case 'forbidden':
        res.writeHead(403);
        return res.end();
      case 'server-error':
        res.writeHead(500, { 'content-type': 'text/plain' });
        return res.end('internal error\n');
      case 'invalid-json':
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end('{"capabilities": {"urn:ietf:params:jmap:core": {}, ');
      case 'not-a-session':
        return json(res, 200, { hello: 'this is JSON, but not a session', accounts: [] });
      case 'no-mail-account':
        return json(res, 200, fakeSession(user, false));
      case 'huge': {
        res.writeHead(200, { 'content-type': 'application/json' });
        const chunk = Buffer.alloc(64 * 1024, 0x20);
        let sent = 0;
        const pump = () => {
          while (sent < HUGE) {
            sent += chunk.length;
            if (!res.write(chunk)) return void res.once('drain', pump);
          }
          res.end();
        };
        res.on('error', () => {});
        return pump();
      }
      case 'cut-short':
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': 1000 });
        res.write('{"capabil', () => res.socket?.destroy());
        return;
      case 'huge-declared':
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': HUGE });
        res.on('error', () => {});
        return res.end(Buffer.alloc(HUGE, 0x20));
    }
  };

  const server = https.createServer({ key: readFileSync(cert.keyFile), cert: cert.cert }, (req, res) => {
    const path = (req.url ?? '/').split('?')[0] as string;
    const entry = { method: req.method ?? '', path, target: req.url ?? '/', authorization: req.headers.authorization, user: undefined as string | undefined };
    requests.push(entry);
    req.resume();
    let m: RegExpExecArray | null;
    if (path === '/.well-known/jmap') return redirect(res, 301, '/jmap/');
    if (path === '/jmap/') {
      const user = authenticate(req);
      entry.user = user;
      if (user === undefined) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="fake", Bearer' });
        return res.end();
      }
      return serveSession(res, user, users.get(user)?.mode ?? 'session');
    }
    if ((m = /^\/redirect\/(\d+)$/.exec(path))) {
      const n = Number(m[1]);
      const status = REDIRECT_CYCLE[n % REDIRECT_CYCLE.length] as number;
      return redirect(res, status, n <= 1 ? '/jmap/' : `/redirect/${n - 1}`);
    }
    if (path === '/redirect-loop') return redirect(res, 302, '/redirect-loop');
    if (path === '/cross-origin') return redirect(res, 302, `https://localhost:${port}/jmap/`);
    if (path === '/to-http') return redirect(res, 302, `http://127.0.0.1:${port}/jmap/`);
    if (path === '/no-location') {
      res.writeHead(302);
      return res.end();
    }
    if ((m = /^\/status\/(\d{3})$/.exec(path))) {
      res.writeHead(Number(m[1]));
      return res.end();
    }
    if (path === '/hang') return;
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('tlsClientError', () => {});

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  port = (server.address() as AddressInfo).port;
  const origin = `https://127.0.0.1:${port}`;
  let closed: Promise<void> | undefined;

  return {
    host: '127.0.0.1',
    port,
    origin,
    wellKnownUrl: `${origin}/.well-known/jmap`,
    sessionUrl: `${origin}/jmap/`,
    ca: ca.ca,
    requests,
    count: (path) => (path === undefined ? requests.length : requests.filter((r) => r.path === path).length),
    url: (path) => `${origin}${path}`,
    setUser: (name, user) => void users.set(name, { ...user }),
    setMode: (name, mode) => {
      const user = users.get(name);
      if (user === undefined) throw new Error(`fake JMAP endpoint: no user ${name}`);
      user.mode = mode;
    },
    reset: () => void requests.splice(0),
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }).then(() => {
        if (ownCa) ca.remove();
      })),
  };
}
