/**
 * Throwaway Dovecot 2.3 IMAP server for integration tests.
 *
 * Each call to startDovecot() creates a private directory under /tmp holding
 * the config, the passwd-file, the Maildirs, the log and Dovecot's runtime
 * sockets, then runs `dovecot -F` on a free loopback port (plain IMAP only,
 * no TLS). Works as root (mail runs as `mail`, login as `dovenull`, internals
 * as `dovecot`) and as an ordinary user (everything runs as the caller).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import {
  chmod,
  constants as fsConstants,
  mkdir,
  mkdtemp,
  open,
  readFile,
  readdir,
  readlink,
  rename,
  rm,
  writeFile,
} from 'node:fs/promises';
import net from 'node:net';
import { createHmac, randomBytes } from 'node:crypto';
import { MasterProcess } from './master-process.js';
import { chownTree, exists, isRoot, signalPid, sleep, tailLines } from './util.js';

export interface DovecotOptions {
  /** user -> password; default { alice: 'alicepw', bob: 'bobpw' } */
  users?: Record<string, string>;
  /** SASL mechanisms (auth_mechanisms); default ['plain', 'login'] */
  authMechanisms?: string[];
  /** load imap_zlib so COMPRESS=DEFLATE is advertised after login; default true */
  compress?: boolean;
  /** appended verbatim to the end of dovecot.conf (later settings win) */
  extraConfig?: string;
  /**
   * OAUTHBEARER and XOAUTH2 against Dovecot's own `passdb oauth2`, validating
   * HS256 JWTs locally with a key the harness makes (no OAuth server);
   * mint tokens with Dovecot.mintToken(). Default false.
   */
  oauth?: boolean;
}

export interface Dovecot {
  host: string;
  port: number;
  /** the private temp directory (removed by stop()) */
  dir: string;
  users: Record<string, string>;
  logPath: string;
  /** absolute path of a user's Maildir (contains cur/ new/ tmp/) */
  maildir(user: string): string;
  /** SIGTERM the master, SIGKILL after 5 s, kill leftovers, remove dir. Idempotent. */
  stop(): Promise<void>;
  /**
   * Send a signal (default SIGTERM) to the master only, without waiting.
   * Note: after SIGKILL the imap/imap-login children keep running and keep
   * their client connections open; use killAll() to really drop them.
   */
  kill(signal?: NodeJS.Signals): void;
  /** SIGKILL the master and every process of this instance; resolves once they are gone. */
  killAll(): Promise<void>;
  /** Contents of the Dovecot log (still available after stop()). */
  readLog(): Promise<string>;
  /**
   * With `oauth: true`: a JWT (HS256; claims sub, iat, exp) Dovecot accepts
   * as the bearer token of `user` for OAUTHBEARER and XOAUTH2.
   */
  mintToken(user: string, ttlSeconds?: number): string;
}

export const DOVECOT_BIN = '/usr/sbin/dovecot';
const IMAP_BIN = '/usr/lib/dovecot/imap';
const POLICY_RC_D = '/usr/sbin/policy-rc.d';

const DEFAULT_USERS: Readonly<Record<string, string>> = { alice: 'alicepw', bob: 'bobpw' };
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

// ---------------------------------------------------------------------------
// small helpers

interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** execFile that never rejects on a non-zero exit; rejects only if it cannot spawn. */
function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env: env ?? process.env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
        reject(err); // ENOENT etc.: the binary could not be started
        return;
      }
      const code = err ? ((err as { code?: number | null }).code ?? null) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}




/** uid/gid and names of a system account, via id(1) (works with NSS, not only /etc/passwd). */
async function lookupAccount(user?: string): Promise<{ uid: number; gid: number; user: string; group: string }> {
  const q = async (flag: string): Promise<string> => {
    const r = await run('id', user ? [flag, user] : [flag]);
    if (r.code !== 0) throw new Error(`id ${flag} ${user ?? ''} failed: ${r.stderr.trim()}`);
    return r.stdout.trim();
  };
  const [uid, gid, name, group] = await Promise.all([q('-u'), q('-g'), q('-un'), q('-gn')]);
  return { uid: Number(uid), gid: Number(gid), user: name, group };
}


// ---------------------------------------------------------------------------
// installation

/**
 * Make sure Dovecot with the IMAP server is installed. No-op if it is.
 * Otherwise (root only) apt-get installs dovecot-imapd, with a policy-rc.d
 * that exits 101 in place so the package scripts do not start the system
 * Dovecot on 0.0.0.0:143.
 */
export async function ensureDovecotInstalled(): Promise<void> {
  if ((await exists(DOVECOT_BIN, fsConstants.X_OK)) && (await exists(IMAP_BIN, fsConstants.X_OK))) return;
  if (!isRoot()) {
    throw new Error(
      `${DOVECOT_BIN} (or ${IMAP_BIN}) is missing and we are not root, so it cannot be installed. ` +
        'Run as root: DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dovecot-imapd',
    );
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };

  // Only refresh the package lists if apt does not know an installable candidate.
  const policy = await run('apt-cache', ['policy', 'dovecot-imapd'], env);
  if (policy.code !== 0 || !/Candidate:\s*(?!\(none\))\S+/.test(policy.stdout)) {
    const upd = await run('apt-get', ['update', '-qq'], env);
    if (upd.code !== 0) throw new Error(`apt-get update failed (exit ${upd.code}):\n${upd.stderr}`);
  }

  // invoke-rc.d asks /usr/sbin/policy-rc.d whether it may start a service;
  // exit 101 means "no". Keep an existing policy that already says no (as in
  // Docker images); otherwise put ours in place and restore the old state.
  const probe = (await exists(POLICY_RC_D, fsConstants.X_OK))
    ? await run(POLICY_RC_D, ['dovecot', 'start']).catch(() => null)
    : null;
  const keepExisting = probe?.code === 101;
  const backup = `${POLICY_RC_D}.dvt-backup-${process.pid}`;
  const hadPolicy = !keepExisting && (await exists(POLICY_RC_D));
  try {
    if (!keepExisting) {
      if (hadPolicy) await rename(POLICY_RC_D, backup);
      await writeFile(POLICY_RC_D, '#!/bin/sh\n# temporary (test harness): do not start services\nexit 101\n');
      await chmod(POLICY_RC_D, 0o755);
    }
    const inst = await run('apt-get', ['install', '-y', '--no-install-recommends', 'dovecot-imapd'], env);
    if (inst.code !== 0) {
      throw new Error(`apt-get install dovecot-imapd failed (exit ${inst.code}):\n${inst.stderr}\n${inst.stdout}`);
    }
  } finally {
    if (!keepExisting) {
      await rm(POLICY_RC_D, { force: true });
      if (hadPolicy) await rename(backup, POLICY_RC_D);
    }
  }
  if (!(await exists(DOVECOT_BIN, fsConstants.X_OK))) {
    throw new Error(`apt-get install succeeded but ${DOVECOT_BIN} is still missing`);
  }
}

// ---------------------------------------------------------------------------
// ports

/** A currently free TCP port on host (bind to port 0, read it, close). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen({ host, port: 0, exclusive: true }, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

/**
 * Connect once and read the first line. Resolves with the line, or null if
 * the connection failed / closed / timed out before a full line arrived.
 */
function readGreeting(host: string, port: number, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    let buf = '';
    let settled = false;
    const sock = net.connect({ host, port });
    const done = (v: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(null), timeoutMs);
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) done(buf.slice(0, nl).replace(/\r$/, ''));
    });
    sock.on('error', () => done(null));
    sock.on('close', () => done(null));
  });
}

// ---------------------------------------------------------------------------
// process bookkeeping

/** Instances not yet stopped (processes or dir may remain), for the emergency hooks. */
/** True if pid exists and is not a zombie (a zombie has already closed its sockets). */
async function isAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'latin1');
    // Format: "pid (comm) S ..."; comm may contain spaces/parens, so use the last ')'.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/**
 * Pids of all processes belonging to one instance. The master's command line
 * holds the config path. Children rewrite their argv to a process title
 * "dovecot-<instance_name>/<service>" (e.g. "dovecot-dvt-Ab12Cd/imap"); as a
 * fallback (e.g. a child between exec and setting its title) a Dovecot binary
 * whose working directory is inside dir (base_dir, the login chroot, or a
 * user's home under dir/mail) counts too. Other processes that merely sit in
 * dir (a debugging shell, say) are left alone.
 */
async function instancePids(dir: string, confPath: string, instanceName: string): Promise<number[]> {
  const baseDir = `${dir}/run`;
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return pids;
  }
  await Promise.all(
    entries.map(async (e) => {
      if (!/^\d+$/.test(e)) return;
      const pid = Number(e);
      if (pid === process.pid) return;
      let match = false;
      let cmdline = '';
      try {
        cmdline = (await readFile(`/proc/${pid}/cmdline`, 'latin1')).replace(/\0/g, ' ');
        match =
          cmdline.includes(confPath) || cmdline.includes(baseDir) || cmdline.startsWith(`dovecot-${instanceName}/`);
      } catch {
        /* process gone */
      }
      if (!match && /^(\S*\/)?dovecot\b|^\/usr\/lib\/dovecot\//.test(cmdline)) {
        try {
          const cwd = await readlink(`/proc/${pid}/cwd`);
          match = cwd === dir || cwd.startsWith(`${dir}/`);
        } catch {
          /* process gone, or not ours to inspect */
        }
      }
      if (match) pids.push(pid);
    }),
  );
  return pids;
}


// ---------------------------------------------------------------------------
// the instance

class Instance extends MasterProcess implements Dovecot {
  readonly host = '127.0.0.1';
  readonly logPath: string;
  readonly confPath: string;
  /** Dovecot instance_name; also in every child's process title */
  readonly instanceName: string;
  private finalLog: string | null = null;

  constructor(
    readonly dir: string,
    readonly port: number,
    readonly users: Record<string, string>,
    private readonly oauthKey: Buffer | null = null,
  ) {
    super();
    this.logPath = `${dir}/log`;
    this.confPath = `${dir}/dovecot.conf`;
    this.instanceName = instanceNameFor(dir);
  }

  maildir(user: string): string {
    return `${this.dir}/mail/${user}/Maildir`;
  }

  mintToken(user: string, ttlSeconds = 3600): string {
    if (!this.oauthKey) throw new Error('this Dovecot was started without oauth: true');
    const b64url = (data: string | Buffer) => Buffer.from(data).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const claims = b64url(JSON.stringify({ sub: user, iat: now, exp: now + ttlSeconds }));
    const signature = createHmac('sha256', this.oauthKey).update(`${head}.${claims}`).digest('base64url');
    return `${head}.${claims}.${signature}`;
  }

  /** Spawn the master with stdout/stderr appended to the log. */
  async spawnMaster(): Promise<void> {
    const log = await open(this.logPath, 'a');
    try {
      const child = spawn(DOVECOT_BIN, ['-F', '-c', this.confPath], {
        detached: false,
        stdio: ['ignore', log.fd, log.fd],
      });
      this.track(child);
    } finally {
      await log.close(); // the child has its own copy of the fd
    }
  }

  async killAll(): Promise<void> {
    this.kill('SIGKILL');
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    // Children may be forked while we scan, so repeat until nothing is left.
    for (;;) {
      const pids = await instancePids(this.dir, this.confPath, this.instanceName);
      const alive: number[] = [];
      for (const pid of pids) if (await isAlive(pid)) alive.push(pid);
      if (alive.length === 0) break;
      for (const pid of alive) signalPid(pid, 'SIGKILL');
      if (Date.now() > deadline) {
        throw new Error(`dovecot processes still alive after SIGKILL: ${alive.join(' ')}`);
      }
      await sleep(20);
    }
    await this.waitExit(STOP_TIMEOUT_MS);
  }

  /**
   * Synchronous last-resort cleanup for the process 'exit'/signal hooks, where
   * nothing async can run: SIGKILL the master, then the children by process
   * title (see instancePids), then remove the directory.
   */
  killSync(): void {
    if (this.child?.pid !== undefined && !this.exited) signalPid(this.child.pid, 'SIGKILL');
    const pattern = `^dovecot-${escapeRegex(this.instanceName)}/|${escapeRegex(this.confPath)}`;
    spawnSync('pkill', ['-KILL', '-f', pattern], { stdio: 'ignore' });
    spawnSync('rm', ['-rf', '--', this.dir], { stdio: 'ignore' });
  }

  protected async doStop(): Promise<void> {
    try {
      if (!this.exited) await this.gracefulStop();
      // Sweep leftovers (e.g. after kill('SIGKILL'), imap children survive).
      await this.killAll();
    } finally {
      this.untrack();
      this.finalLog = await readFile(this.logPath, 'utf8').catch(() => '');
      await rm(this.dir, { recursive: true, force: true });
    }
  }

  /**
   * SIGTERM the master and wait (up to STOP_TIMEOUT_MS, then SIGKILL) for it to
   * exit. Dovecot's log process lingers ~1 s after every other child is gone,
   * and the master waits for it; once nothing else is left to log, we SIGTERM
   * the log process too, which brings a clean stop down to a few tens of ms.
   */
  private async gracefulStop(): Promise<void> {
    this.kill('SIGTERM');
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    const master = this.pid;
    let loggerSignalled = false;
    while (!this.exited) {
      if (Date.now() >= deadline) {
        this.kill('SIGKILL');
        break;
      }
      if (!loggerSignalled) {
        const others: { pid: number; title: string }[] = [];
        for (const pid of await instancePids(this.dir, this.confPath, this.instanceName)) {
          if (pid === master || !(await isAlive(pid))) continue;
          others.push({ pid, title: await readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '') });
        }
        const logTitle = `dovecot-${this.instanceName}/log`;
        if (others.length > 0 && others.every((p) => p.title.startsWith(logTitle))) {
          for (const p of others) signalPid(p.pid, 'SIGTERM');
          loggerSignalled = true;
        }
      }
      await this.waitExit(20);
    }
  }

  async readLog(): Promise<string> {
    if (this.finalLog !== null) return this.finalLog;
    return readFile(this.logPath, 'utf8').catch(() => '');
  }
}

/** Unique per instance because mkdtemp's suffix is: /tmp/dvt-Ab12Cd -> "dvt-Ab12Cd". */
function instanceNameFor(dir: string): string {
  return dir.slice(dir.lastIndexOf('/') + 1);
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---------------------------------------------------------------------------
// config

interface Identity {
  mailUser: string;
  mailUid: number;
  mailGid: number;
  loginUser: string;
  internalUser: string;
  internalGroup: string;
  /** chroot for imap-login: Dovecot's default "login" needs root */
  loginChroot: string;
  /** anvil keeps its default chroot as root; must be empty otherwise */
  anvilChroot: string | null;
}

async function identity(): Promise<Identity> {
  if (isRoot()) {
    // Mail processes may not run as uid 0; `mail` (uid 8) exists on every
    // Debian. dovenull/dovecot are created by the dovecot-core package.
    const mail = await lookupAccount('mail');
    return {
      mailUser: mail.user,
      mailUid: mail.uid,
      mailGid: mail.gid,
      loginUser: 'dovenull',
      internalUser: 'dovecot',
      internalGroup: 'dovecot',
      loginChroot: 'login',
      anvilChroot: null,
    };
  }
  const me = await lookupAccount();
  return {
    mailUser: me.user,
    mailUid: me.uid,
    mailGid: me.gid,
    loginUser: me.user,
    internalUser: me.user,
    // Without this Dovecot tries to chown the stats-writer socket to group
    // dovecot and fails.
    internalGroup: me.group,
    loginChroot: '',
    anvilChroot: '',
  };
}

function buildConfig(p: {
  dir: string;
  port: number;
  id: Identity;
  mechanisms: string[];
  compress: boolean;
  oauth: boolean;
  extra: string | undefined;
}): string {
  const { dir, port, id } = p;
  const plugins = p.compress ? 'zlib imap_zlib' : '';
  return `# generated by test/harness/dovecot.ts -- throwaway test instance
instance_name = ${instanceNameFor(dir)}
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/log
info_log_path = ${dir}/log
debug_log_path = ${dir}/log
log_timestamp = "%Y-%m-%d %H:%M:%S "

protocols = imap
listen = 127.0.0.1
shutdown_clients = yes

default_login_user = ${id.loginUser}
default_internal_user = ${id.internalUser}
default_internal_group = ${id.internalGroup}
first_valid_uid = ${id.mailUid}
last_valid_uid = ${id.mailUid}
first_valid_gid = ${id.mailGid}
last_valid_gid = ${id.mailGid}

ssl = no
disable_plaintext_auth = no
auth_mechanisms = ${p.mechanisms.join(' ')}
auth_verbose = yes
# Stock is 2 s before a failed-auth reply; tests want it short. (Failures are
# still flushed by a 500 ms timer in the auth process, so a NO takes ~0.5 s.)
auth_failure_delay = 0
# Honour ID x-originating-ip / x-session-id etc. from a local proxy.
login_trusted_networks = 127.0.0.1/8

mail_location = maildir:~/Maildir
namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
}

# COMPRESS=DEFLATE (RFC 4978) is only advertised with the imap_zlib plugin.
protocol imap {
  mail_plugins = $mail_plugins ${plugins}
}

passdb {
  driver = passwd-file
${p.oauth ? '  mechanisms = plain login\n' : ''}  args = scheme=PLAIN username_format=%u ${dir}/users
}
${
  p.oauth
    ? `# OAUTHBEARER/XOAUTH2: HS256 JWTs checked against ${dir}/oauth2-keys/default/HS256/default
passdb {
  driver = oauth2
  mechanisms = oauthbearer xoauth2
  args = ${dir}/dovecot-oauth2.conf.ext
}
`
    : ''
}
userdb {
  driver = passwd-file
  args = username_format=%u ${dir}/users
  default_fields = uid=${id.mailUid} gid=${id.mailGid} home=${dir}/mail/%u
}

service imap-login {
  chroot = ${id.loginChroot}
  inet_listener imap {
    address = 127.0.0.1
    port = ${port}
  }
  # Built-in default listener (993, ssl=yes): disable it, we only want plain.
  inet_listener imaps {
    port = 0
  }
  # No pre-forked login process (Dovecot's default is 0 too): a pre-forked
  # imap-login that is still starting up (handshaking with stats-writer) when
  # the master gets SIGTERM stalls the shutdown for ~6 s. Forking on demand
  # costs a few ms per connection.
  process_min_avail = 0
}
service anvil {
${id.anvilChroot === null ? '' : `  chroot = ${id.anvilChroot}\n`}  # Disable the auth penalty (2,4,8,15 s extra delay per failed login from
  # the same IP), which makes negative-auth tests slow and flaky.
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
${p.extra ? `\n# ---- extraConfig ----\n${p.extra}\n` : ''}`;
}

// ---------------------------------------------------------------------------
// start

export async function startDovecot(opts: DovecotOptions = {}): Promise<Dovecot> {
  const users = { ...(opts.users ?? DEFAULT_USERS) };
  for (const [u, pw] of Object.entries(users)) {
    // passwd-file is ':'-separated; keep names safe as path components too.
    // Anything else goes (spaces, quotes, `%`, non-ASCII): Dovecot itself
    // refuses names outside auth_username_chars unless the test empties it.
    if (u === '' || /[:/\\\0\r\n]/.test(u) || u.startsWith('.')) throw new Error(`unsupported user name for passwd-file: ${JSON.stringify(u)}`);
    if (/[:\r\n\0]/.test(pw)) throw new Error(`unsupported password for user ${u} (contains ':' or a newline)`);
  }
  const oauth = opts.oauth ?? false;
  const mechanisms = opts.authMechanisms ?? (oauth ? ['plain', 'login', 'oauthbearer', 'xoauth2'] : ['plain', 'login']);
  const oauthKey = randomBytes(32);
  const compress = opts.compress !== false;

  if (!(await exists(DOVECOT_BIN, fsConstants.X_OK))) {
    throw new Error(`${DOVECOT_BIN} not found; call ensureDovecotInstalled() first (or apt-get install dovecot-imapd)`);
  }
  const id = await identity();

  // Short path on purpose: unix sockets live under base_dir and their paths
  // must stay below 108 bytes. /tmp itself is 1777, so traversable by all.
  const dir = await mkdtemp('/tmp/dvt-');
  // mkdtemp creates 0700; the mail, dovenull and dovecot users must traverse it.
  await chmod(dir, 0o755);

  let inst: Instance | null = null;
  try {
    await mkdir(`${dir}/state`);
    await mkdir(`${dir}/mail`);
    const passwd: string[] = [];
    for (const [u, pw] of Object.entries(users)) {
      passwd.push(`${u}:{PLAIN}${pw}::::::`);
      // Pre-create the Maildir so the first SELECT INBOX does not race.
      for (const sub of ['cur', 'new', 'tmp']) await mkdir(`${dir}/mail/${u}/Maildir/${sub}`, { recursive: true });
    }
    await writeFile(`${dir}/users`, passwd.join('\n') + '\n', { mode: 0o644 });
    if (oauth) {
      // Key file path: <prefix>/<azp>/<alg>/<kid>, azp and kid "default".
      await mkdir(`${dir}/oauth2-keys/default/HS256`, { recursive: true, mode: 0o755 });
      await writeFile(`${dir}/oauth2-keys/default/HS256/default`, oauthKey.toString('base64'), { mode: 0o644 });
      await writeFile(
        `${dir}/dovecot-oauth2.conf.ext`,
        `introspection_mode = local\nlocal_validation_key_dict = fs:posix:prefix=${dir}/oauth2-keys/\nusername_attribute = sub\n`,
        { mode: 0o644 },
      );
    }
    if (isRoot()) await chownTree(`${dir}/mail`, id.mailUid, id.mailGid);

    for (let attempt = 1; ; attempt++) {
      // freePort() can race with other tests grabbing the same port before
      // Dovecot binds it; that shows up as "Address already in use" and we
      // simply retry on a new port.
      const port = await freePort('127.0.0.1');
      const conf = buildConfig({ dir, port, id, mechanisms, compress, oauth, extra: opts.extraConfig });
      await writeFile(`${dir}/dovecot.conf`, conf, { mode: 0o644 });

      // Validate first so config mistakes produce Dovecot's own message.
      const check = await run(DOVECOT_BIN, ['-c', `${dir}/dovecot.conf`, '-n']);
      if (check.code !== 0) {
        throw new Error(`dovecot config check failed (exit ${check.code}):\n${check.stderr || check.stdout}`);
      }

      inst = new Instance(dir, port, users, oauth ? oauthKey : null);
      await inst.spawnMaster();
      const last = await waitReady(inst);
      if (last === true) return inst;

      const log = await readFile(`${dir}/log`, 'utf8').catch(() => '');
      if (!inst.isRunning && attempt < 3 && /Address already in use/.test(log)) {
        await inst.abandon();
        inst = null;
        continue;
      }
      throw new Error(
        `dovecot did not become ready on 127.0.0.1:${port} within ${START_TIMEOUT_MS / 1000} s ` +
          `(master ${inst.isRunning ? 'running' : 'exited'}, last greeting ${JSON.stringify(last)}); ` +
          `last log lines:\n${tailLines(log, 20)}`,
      );
    }
  } catch (err) {
    if (inst) await inst.stop().catch(() => {});
    else await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Poll until the port accepts a connection and sends a "* OK" greeting.
 * Returns true when ready, else the last line read (or null) once the master
 * has exited or START_TIMEOUT_MS has passed.
 */
async function waitReady(inst: Instance): Promise<true | string | null> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let last: string | null = null;
  while (Date.now() < deadline && inst.isRunning) {
    last = await readGreeting(inst.host, inst.port, Math.max(100, Math.min(2000, deadline - Date.now())));
    // isRunning: a greeting from someone else who grabbed the port does not count.
    if (last !== null && last.startsWith('* OK') && inst.isRunning) return true;
    await sleep(25);
  }
  return last;
}

