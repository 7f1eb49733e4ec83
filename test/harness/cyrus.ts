/**
 * Throwaway Cyrus IMAP 3.6 server (Debian 12's build) with its JMAP server,
 * for integration tests.
 *
 * Installation (ensureCyrusInstalled): Debian's cyrus-imapd conflicts with
 * dovecot-imapd (both provide imap-server), so the Cyrus .debs are fetched
 * with `apt-get download` and unpacked with `dpkg -x` into a private prefix
 * (default /opt/cyrus-root), together with the shared libraries they need
 * that are not installed. Their maintainer scripts never run. The only
 * system-wide change is `apt-get install` of the SASL plugins and
 * saslpasswd2 (SYSTEM_PKGS) if missing, which do not conflict with Dovecot.
 *
 * Each startCyrus() creates a private directory under /tmp holding
 * imapd.conf, cyrus.conf, the sasldb, the config directory, the mail spool
 * and master.log, then runs the Cyrus master in the foreground, in its own
 * process group, with:
 *   127.0.0.1:port       plain IMAP (no STARTTLS unless opts.tls is given)
 *   127.0.0.1:tlsPort    IMAP over TLS (imapd -s), only with opts.tls
 *   127.0.0.1:httpPort   HTTP with JMAP (RFC 8620/8621), Basic auth
 *   dir/conf/socket/lmtp LMTP for delivering test mail
 *
 * Logging: Cyrus logs only through syslog(3), i.e. to the unix datagram
 * socket /dev/log, and this machine has no syslog daemon. So the first
 * startCyrus() of a test process that finds no /dev/log starts one small
 * receiver (a Python script, SYSLOG_CATCHER below) owning /dev/log, which
 * appends every message to the shared file SYSLOG_FILE. Every instance tags
 * its lines with a unique syslog_prefix and readLog() picks its own lines out
 * of that file, so it does not matter which test process's receiver owns
 * /dev/log. When its test process exits, the receiver stays only as long as
 * some harness Cyrus (of another test process running in parallel) is still
 * up, so that one test file finishing does not cut off the others' logs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import {
  chmod,
  chown,
  constants as fsConstants,
  copyFile,
  mkdir,
  mkdtemp,
  open,
  readFile,
  readdir,
  readlink,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { dirname } from 'node:path';
import { freePort } from './dovecot.js';

export interface CyrusOptions {
  /** user -> password; default { alice: 'alicepw', bob: 'bobpw' }. The Cyrus admin (admin/adminpw) is added on top. */
  users?: Record<string, string>;
  /**
   * imapd.conf options. A key that the harness generates is replaced (Cyrus
   * refuses an option given twice and stops); other keys are appended.
   */
  extraConfig?: Record<string, string>;
  /** where Cyrus is (or gets) unpacked; default CYRUS_DEFAULT_PREFIX (/opt/cyrus-root) */
  prefix?: string;
  /**
   * A server certificate and key (PEM): Cyrus then also listens with
   * implicit TLS on tlsPort, and the plain port offers STARTTLS (LOGIN stays
   * allowed without TLS). The files are copied into the instance directory.
   */
  tls?: { certFile: string; keyFile: string };
}

export interface Cyrus {
  host: string;
  /** plain IMAP (offers STARTTLS when started with tls) */
  port: number;
  /** IMAP over TLS from the first byte (imaps), or null when started without tls */
  tlsPort: number | null;
  /** HTTP: JMAP at /jmap/, session resource at /.well-known/jmap (301 to /jmap) */
  httpPort: number;
  /** http://127.0.0.1:HTTPPORT/.well-known/jmap */
  jmapSessionUrl: string;
  /** the private temp directory (removed by stop()) */
  dir: string;
  /** the test users (without the admin), each with INBOX, Drafts, Sent, Trash */
  users: Record<string, string>;
  /** the Cyrus admin account (may log in, has no mailbox of its own) */
  admin: { user: string; password: string };
  /** unix socket for LMTP delivery (e.g. python smtplib.LMTP) */
  lmtpSocket: string;
  /** SIGTERM the master (it takes its children down), SIGKILL after 10 s, sweep leftovers, remove dir. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL the master and every process of this instance; resolves once they are gone (dir is kept). */
  killAll(): Promise<void>;
  /**
   * The harness's notes and anything the master printed before it detached
   * its stdio (dir/master.log), then this instance's syslog lines, i.e.
   * everything Cyrus logged (flushed first; still available after stop()).
   */
  readLog(): Promise<string>;
}

export const CYRUS_DEFAULT_PREFIX = '/opt/cyrus-root';

/** The Cyrus packages; httpd (JMAP) is in cyrus-caldav. cyrus-admin/libcyrus-imap-perl give cyradm for debugging. */
const DEBS = ['cyrus-common', 'cyrus-imapd', 'cyrus-caldav', 'cyrus-clients', 'cyrus-admin', 'libcyrus-imap-perl'];
/**
 * Library packages not fetched: libclamav12 (cyr_virusscan) and libzephyr4
 * (notifyd) drag in a lot and only serve binaries the tests never run.
 */
const SKIP_LIBS = new Set(['libclamav12', 'libzephyr4', 'libzephyr4-krb5']);
/**
 * Must be real system installs: libsasl2 loads its plugins (sasldb auxprop,
 * PLAIN, LOGIN) from the fixed system directory /usr/lib/<triplet>/sasl2, and
 * startCyrus() runs the system saslpasswd2.
 */
const SYSTEM_PKGS = ['libsasl2-2', 'libsasl2-modules', 'libsasl2-modules-db', 'sasl2-bin'];
/** Binaries that must resolve all their libraries (checked with ldd after unpacking). */
const VERIFY_BINS = [
  'master', 'imapd', 'httpd', 'lmtpd', 'idled', 'ctl_cyrusdb', 'ctl_conversationsdb', 'ctl_mboxlist',
  'cyr_info', 'cyr_buildinfo', 'mbpath', 'reconstruct', 'quota', 'cyr_dbtool', 'squatter',
];
/** Written last into a fully unpacked and verified prefix. */
const MARKER = '.cyrus-harness-installed';
const SASLPASSWD2 = '/usr/sbin/saslpasswd2';

const SYSLOG_SOCKET = '/dev/log';
/** Shared by all test processes, see the header comment. */
export const SYSLOG_FILE = '/tmp/cyrus-harness-syslog.log';

/** sasldb realm == servername: imapd and httpd look users up as user@servername. */
const SERVERNAME = 'localhost';
const ADMIN = { user: 'admin', password: 'adminpw' };
const DEFAULT_USERS: Readonly<Record<string, string>> = { alice: 'alicepw', bob: 'bobpw' };
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 10_000;
const INSTALL_LOCK_TIMEOUT_S = 600;

// ---------------------------------------------------------------------------
// small helpers

interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** execFile that never rejects on a non-zero exit; rejects only if it cannot spawn. */
function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string } = {},
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { env: opts.env ?? process.env, cwd: opts.cwd, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
          reject(err); // ENOENT etc.: the binary could not be started
          return;
        }
        const code = err ? ((err as { code?: number | null }).code ?? null) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code}):\n${(r.stderr + r.stdout).trim()}`);
  }
  return r.stdout;
}





/** Debian multiarch triplet of this machine (the directory the libraries live in). */
function multiarch(): string {
  switch (process.arch) {
    case 'x64':
      return 'x86_64-linux-gnu';
    case 'arm64':
      return 'aarch64-linux-gnu';
    default:
      throw new Error(`cyrus harness: unsupported architecture ${process.arch}`);
  }
}

/** LD_LIBRARY_PATH for the unpacked binaries. libpcre3 ships in /lib/<triplet>, the rest in /usr/lib/<triplet>. */
function cyrusLibPath(prefix: string): string {
  const t = multiarch();
  return `${prefix}/usr/lib/${t}:${prefix}/lib/${t}`;
}

const binDir = (prefix: string): string => `${prefix}/usr/lib/cyrus/bin`;

// ---------------------------------------------------------------------------
// installation

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };

/** Names among pkgs that dpkg reports as installed. */
async function installedPackages(pkgs: string[]): Promise<Set<string>> {
  const out = new Set<string>();
  if (pkgs.length === 0) return out;
  // Exit status 1 if some names are unknown; stdout still lists the known ones.
  const r = await run('dpkg-query', ['-W', '-f=${Package}\t${db:Status-Abbrev}\n', ...pkgs]);
  for (const line of r.stdout.split('\n')) {
    const [name, abbrev] = line.split('\t');
    if (name && abbrev?.startsWith('ii')) out.add(name);
  }
  return out;
}

/** lib* package names in a Depends/Pre-Depends value (first alternative, no versions, no :any). */
function libDeps(field: string): string[] {
  return field
    .split(',')
    .map((d) => (d.split('|')[0] ?? '').replace(/\(.*?\)/g, '').replace(/:any\b/, '').trim())
    .filter((d) => d.startsWith('lib'));
}

/** Depends + Pre-Depends of the candidate versions of pkgs (one apt-cache call). */
async function aptDepends(pkgs: string[]): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (pkgs.length === 0) return out;
  // Exit status is non-zero if one name is purely virtual; parse what we got.
  const r = await run('apt-cache', ['show', '--no-all-versions', ...pkgs]);
  for (const para of r.stdout.split(/\n\n+/)) {
    const name = /^Package:\s*(\S+)/m.exec(para)?.[1];
    if (!name) continue;
    const deps: string[] = [];
    for (const m of para.matchAll(/^(?:Pre-)?Depends:(.*)$/gm)) deps.push(...libDeps(m[1] ?? ''));
    out.set(name, deps);
  }
  return out;
}

/**
 * Library packages the unpacked Cyrus needs that are not installed: the
 * closure over lib* dependencies, starting from the downloaded .debs.
 */
async function missingLibraries(debFiles: string[]): Promise<string[]> {
  let frontier: string[] = [];
  for (const f of debFiles) {
    const fields = await runOk('dpkg-deb', ['-f', f, 'Depends', 'Pre-Depends']);
    frontier.push(...libDeps(fields.replace(/^(Pre-)?Depends:/gm, ',')));
  }
  const seen = new Set<string>();
  const need: string[] = [];
  while (frontier.length > 0) {
    const fresh = [...new Set(frontier)].filter((p) => !seen.has(p) && !SKIP_LIBS.has(p) && !DEBS.includes(p));
    fresh.forEach((p) => seen.add(p));
    const installed = await installedPackages(fresh);
    const todo = fresh.filter((p) => !installed.has(p));
    need.push(...todo);
    const deps = await aptDepends(todo);
    frontier = [...deps.values()].flat();
  }
  return need.sort();
}

/** Does apt know an installable candidate for pkg? (Else its package lists need an update.) */
async function hasCandidate(pkg: string): Promise<boolean> {
  const r = await run('apt-cache', ['policy', pkg]);
  return r.code === 0 && /Candidate:\s*(?!\(none\))\S+/.test(r.stdout);
}

async function aptUpdate(): Promise<void> {
  await runOk('apt-get', ['update', '-qq'], { env: APT_ENV });
}

/** `apt-get download` into cwd; on failure (stale lists: 404) refresh the lists once and retry. */
async function aptDownload(pkgs: string[], cwd: string, updated: { done: boolean }): Promise<void> {
  const args = ['download', ...pkgs];
  let r = await run('apt-get', args, { cwd, env: APT_ENV });
  if (r.code !== 0 && !updated.done) {
    await aptUpdate();
    updated.done = true;
    r = await run('apt-get', args, { cwd, env: APT_ENV });
  }
  if (r.code !== 0) throw new Error(`apt-get download ${pkgs.join(' ')} failed (exit ${r.code}):\n${r.stderr}`);
}

/** Is the prefix complete (marker written after verification) and are the system packages there? */
async function installComplete(prefix: string): Promise<boolean> {
  if (!(await exists(`${prefix}/${MARKER}`))) return false;
  if (!(await exists(`${binDir(prefix)}/master`, fsConstants.X_OK))) return false;
  if (!(await exists(SASLPASSWD2, fsConstants.X_OK))) return false;
  return (await installedPackages(SYSTEM_PKGS)).size === SYSTEM_PKGS.length;
}

/**
 * Hold an exclusive flock(1) on lockPath while fn runs. The lock belongs to
 * a `flock ... cat` child reading our stdin pipe: it is released when we end
 * the pipe, and also if this process dies in any way (the pipe closes, cat
 * sees EOF) -- so a crashed test run can never leave a stale lock behind.
 */
async function withFileLock<T>(lockPath: string, fn: () => Promise<T>): Promise<T> {
  const child = spawn(
    'flock',
    ['--exclusive', '--timeout', String(INSTALL_LOCK_TIMEOUT_S), lockPath, 'sh', '-c', 'echo locked; exec cat >/dev/null'],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const locked = await new Promise<boolean>((resolve) => {
    child.stdout.setEncoding('utf8').once('data', () => resolve(true));
    void exited.then(() => resolve(false));
  });
  if (!locked) {
    throw new Error(`could not lock ${lockPath} within ${INSTALL_LOCK_TIMEOUT_S} s (flock exit ${await exited}): ${stderr}`);
  }
  try {
    return await fn();
  } finally {
    child.stdin.end();
    await exited;
  }
}

const installing = new Map<string, Promise<string>>();

/**
 * Make sure Cyrus is unpacked in prefix (default /opt/cyrus-root) and the
 * SASL system packages are installed; returns the prefix. Idempotent and
 * cheap when done (a marker file). Safe to call from several processes at
 * once: the work happens under an flock on `${prefix}.lock`, and the prefix
 * is unpacked into a staging directory that is renamed into place only when
 * complete.
 */
export function ensureCyrusInstalled(prefix: string = CYRUS_DEFAULT_PREFIX): Promise<string> {
  let p = installing.get(prefix);
  if (!p) {
    p = doEnsureInstalled(prefix);
    installing.set(prefix, p);
    p.catch(() => installing.delete(prefix)); // let a later call retry
  }
  return p;
}

async function doEnsureInstalled(prefix: string): Promise<string> {
  if (!prefix.startsWith('/') || prefix === '/') throw new Error(`cyrus prefix must be an absolute directory: ${prefix}`);
  prefix = prefix.replace(/\/+$/, '');
  if (await installComplete(prefix)) return prefix;
  await mkdir(dirname(prefix), { recursive: true });
  return withFileLock(`${prefix}.lock`, async () => {
    if (await installComplete(prefix)) return prefix; // another process did it while we waited
    await install(prefix);
    return prefix;
  });
}

async function install(prefix: string): Promise<void> {
  const t0 = Date.now();
  const updated = { done: false };
  const installedSys = await installedPackages(SYSTEM_PKGS);
  const missingSys = SYSTEM_PKGS.filter((p) => !installedSys.has(p));
  if (missingSys.length > 0 && !isRoot()) {
    throw new Error(
      `cyrus harness: system packages ${missingSys.join(' ')} are missing and we are not root. Run as root: ` +
        `apt-get install -y --no-install-recommends ${missingSys.join(' ')}`,
    );
  }

  // Refresh the package lists only if apt cannot offer Cyrus at all (a
  // fresh container has no lists); stale lists are caught by aptDownload.
  if (!(await hasCandidate('cyrus-imapd'))) {
    await aptUpdate();
    updated.done = true;
  }
  if (missingSys.length > 0) {
    let r = await run('apt-get', ['install', '-y', '--no-install-recommends', ...missingSys], { env: APT_ENV });
    if (r.code !== 0 && !updated.done) {
      await aptUpdate();
      updated.done = true;
      r = await run('apt-get', ['install', '-y', '--no-install-recommends', ...missingSys], { env: APT_ENV });
    }
    if (r.code !== 0) throw new Error(`apt-get install ${missingSys.join(' ')} failed (exit ${r.code}):\n${r.stderr}`);
  }

  // A prefix without the marker is a half-finished or foreign unpack: only
  // replace it if it really is a Cyrus tree.
  if (await exists(prefix)) {
    const entries = await readdir(prefix);
    if (entries.length > 0 && !(await exists(`${prefix}/usr/lib/cyrus`))) {
      throw new Error(`${prefix} exists and does not look like an unpacked Cyrus; refusing to replace it`);
    }
  }

  const work = await mkdtemp('/tmp/cyrus-debs-');
  const staging = `${prefix}.staging-${process.pid}`;
  try {
    // apt's unprivileged _apt user writes the downloads into cwd.
    await chmod(work, 0o755);
    await aptDownload(DEBS, work, updated);
    const cyrusDebs = (await readdir(work)).filter((f) => f.endsWith('.deb')).map((f) => `${work}/${f}`);
    const libs = await missingLibraries(cyrusDebs);
    if (libs.length > 0) await aptDownload(libs, work, updated);

    await rm(staging, { recursive: true, force: true });
    await mkdir(staging, { recursive: true });
    const debs = (await readdir(work)).filter((f) => f.endsWith('.deb')).sort();
    for (const f of debs) await runOk('dpkg', ['-x', `${work}/${f}`, staging]);

    // Verify before publishing: every binary must resolve all libraries.
    const env = { ...process.env, LD_LIBRARY_PATH: cyrusLibPath(staging) };
    const problems: string[] = [];
    await Promise.all(
      VERIFY_BINS.map(async (b) => {
        const f = `${binDir(staging)}/${b}`;
        if (!(await exists(f, fsConstants.X_OK))) {
          problems.push(`missing binary ${b}`);
          return;
        }
        const r = await run('ldd', [f], { env });
        const bad = r.stdout.split('\n').filter((l) => l.includes('not found'));
        if (r.code !== 0 || bad.length > 0) problems.push(`${b}: ${bad.map((l) => l.trim()).join(', ') || r.stderr.trim()}`);
      }),
    );
    if (problems.length > 0) throw new Error(`unpacked Cyrus is incomplete:\n${problems.join('\n')}`);

    await writeFile(`${staging}/PACKAGES`, debs.join('\n') + '\n');
    // For humans running the Cyrus tools by hand (cyr_info, mbpath, cyradm, ...).
    const perlDir = (await readdir(`${staging}/usr/lib/${multiarch()}/perl5`).catch(() => [] as string[]))[0];
    await writeFile(
      `${staging}/env.sh`,
      `# source me: environment for the Cyrus binaries unpacked in ${prefix}\n` +
        `export LD_LIBRARY_PATH=${cyrusLibPath(prefix)}\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n` +
        `export PERL5LIB=${perlDir ? `${prefix}/usr/lib/${multiarch()}/perl5/${perlDir}:` : ''}${prefix}/usr/share/perl5\${PERL5LIB:+:$PERL5LIB}\n` +
        `export PATH=${binDir(prefix)}:${prefix}/usr/bin:$PATH\n`,
    );
    await writeFile(
      `${staging}/${MARKER}`,
      JSON.stringify({ installedAt: new Date().toISOString(), seconds: (Date.now() - t0) / 1000, debs }, null, 2) + '\n',
    );
    await rm(prefix, { recursive: true, force: true });
    await rename(staging, prefix);
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(staging, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------
// syslog receiver

/** Every master's command line has `-C /tmp/cyt-XXXXXX/etc/imapd.conf`; the receiver looks for it. */
const INSTANCE_MARK = '/tmp/cyt-';

/**
 * Minimal syslog receiver, run with `python3 -c` (Node cannot bind unix
 * datagram sockets). argv: SOCKET LOGFILE MARK.
 * - Prints "ready" once it owns SOCKET, or "taken" (and exits) if a live
 *   receiver already does. Binding is the atomic claim; a stale socket file
 *   left by a killed receiver (connect gives ECONNREFUSED) is replaced.
 * - Appends one line per message to LOGFILE ("<PRI>" dropped).
 * - When its stdin closes (the Node process that started it is gone, however
 *   it died) it keeps serving while any process whose command line contains
 *   `cyrus/bin/master` and MARK exists (a harness Cyrus of another test
 *   process), and exits once none has been seen for two checks in a row.
 * - On exit (also on SIGTERM/SIGINT) it removes SOCKET if that is still its own.
 */
const SYSLOG_CATCHER = String.raw`
import errno, os, re, select, signal, socket, stat, sys, time
path, logfile, mark = sys.argv[1], sys.argv[2], sys.argv[3].encode()

def claim():
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.bind(path)
            return s
        except OSError as e:
            s.close()
            if e.errno != errno.EADDRINUSE:
                raise
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                return None
        except FileNotFoundError:
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(path)
            return None
        except ConnectionRefusedError:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        except FileNotFoundError:
            pass
        finally:
            probe.close()
    sys.exit("cannot bind " + path)

def cyrus_running():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/cmdline" % p, "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"cyrus/bin/master\0" in cmd and mark in cmd:
                return True
    return False

s = claim()
if s is None:
    print("taken", flush=True)
    sys.exit(0)
os.chmod(path, 0o666)
ino = os.stat(path).st_ino

def bye(*_):
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass
    os._exit(0)

signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)
try:
    if os.path.getsize(logfile) > 64 * 1024 * 1024:
        os.truncate(logfile, 0)
except OSError:
    pass
out = open(logfile, "ab", buffering=0)
pri = re.compile(rb"^<\d+>")
print("ready", flush=True)
orphan, idle_checks, next_check = False, 0, 0.0
while True:
    r, _, _ = select.select([s] if orphan else [s, sys.stdin], [], [], 0.5)
    if s in r:
        out.write(pri.sub(b"", s.recv(65536)).rstrip(b"\n\0") + b"\n")
    if not orphan and sys.stdin in r and not os.read(sys.stdin.fileno(), 4096):
        orphan = True
    if orphan and time.monotonic() >= next_check:
        next_check = time.monotonic() + 0.5
        idle_checks = 0 if cyrus_running() else idle_checks + 1
        if idle_checks >= 2:
            bye()
`;
import { LineClient } from './line-client.js';
import { MasterProcess, onHarnessExit } from './master-process.js';
import { chownTree, exists, isRoot, signalPid, sleep, tailLines } from './util.js';

let catcher: ChildProcess | null = null;
let flushSeq = 0;
let catcherStarting: Promise<string> | null = null;

/**
 * Make sure something receives Cyrus's syslog messages; returns a note for
 * the instance log. Owns at most one receiver per test process; if another
 * process's receiver owns /dev/log, our lines land in SYSLOG_FILE all the same.
 */
function ensureSyslogCatcher(): Promise<string> {
  if (catcher && catcher.exitCode === null && catcher.signalCode === null) {
    return Promise.resolve(`syslog: receiver pid ${catcher.pid} (this process) -> ${SYSLOG_FILE}`);
  }
  catcherStarting ??= startSyslogCatcher().finally(() => (catcherStarting = null));
  return catcherStarting;
}

async function startSyslogCatcher(): Promise<string> {
  // Someone (a syslog daemon, another test process's receiver) is listening
  // on /dev/log: nothing to do. /proc/net/unix lists bound sockets by path;
  // this saves spawning python per instance. (Python re-checks for real.)
  if (await exists(SYSLOG_SOCKET)) {
    const unix = await readFile('/proc/net/unix', 'latin1').catch(() => '');
    if (unix.split('\n').some((l) => l.endsWith(` ${SYSLOG_SOCKET}`))) {
      return `syslog: ${SYSLOG_SOCKET} is owned by another process (a receiver of another test process writes to ${SYSLOG_FILE})`;
    }
  }
  if (!(await exists(dirname(SYSLOG_SOCKET), fsConstants.W_OK))) {
    return `syslog: no ${SYSLOG_SOCKET} and cannot create it (not root?): Cyrus's syslog messages are lost`;
  }
  const child = spawn('python3', ['-c', SYSLOG_CATCHER, SYSLOG_SOCKET, SYSLOG_FILE, INSTANCE_MARK], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const first = await new Promise<string>((resolve) => {
    let buf = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      if (buf.includes('\n')) resolve(buf.trim());
    });
    child.once('exit', () => resolve(buf.trim()));
    child.once('error', (e) => resolve(`error ${e.message}`));
    setTimeout(() => resolve('timeout'), 5000).unref();
  });
  if (first !== 'ready') {
    child.kill('SIGKILL');
    return first === 'taken'
      ? `syslog: ${SYSLOG_SOCKET} is owned by another process`
      : `syslog: receiver failed (${first}) ${stderr.trim()}: Cyrus's syslog messages may be lost`;
  }
  // It must never keep the test process alive: unref the child and its pipes
  // (the stdin pipe stays open, which is what keeps the receiver running).
  child.unref();
  for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as net.Socket).unref();
  child.once('exit', () => {
    if (catcher === child) catcher = null;
  });
  catcher = child;
  return `syslog: receiver pid ${child.pid} (this process) owns ${SYSLOG_SOCKET} -> ${SYSLOG_FILE}`;
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------
// process bookkeeping

// The syslog receiver is not signalled when the test process ends abruptly:
// our exit closes its stdin, and it leaves as soon as no harness Cyrus (of
// another test process) needs it.
onHarnessExit(() => {
  catcher = null;
});


/** State letter and ppid from the text of /proc/PID/stat. */
function parseStat(text: string): { state: string; ppid: number } {
  // "pid (comm) S ppid ..."; comm may contain spaces and parens: use the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: rest[0] ?? '', ppid: Number(rest[1]) };
}

/**
 * Pids of this instance's processes: those whose command line names its
 * imapd.conf (the master and every service, all run with `-C conf`), plus any
 * child of the master (whatever its command line). Zombies are skipped.
 * Synchronous so the exit hook can use it too.
 */
function instancePidsSync(confPath: string, masterPid: number | undefined): number[] {
  const pids: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return pids;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    try {
      const st = parseStat(readFileSync(`/proc/${pid}/stat`, 'latin1'));
      if (st.state === 'Z' || st.state === 'X') continue;
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0/g, ' ');
      if (pid === masterPid || st.ppid === masterPid || cmdline.includes(confPath)) pids.push(pid);
    } catch {
      /* gone */
    }
  }
  return pids;
}

// ---------------------------------------------------------------------------
// /proc/net: who listens on a port

/** Inodes of TCP sockets in LISTEN state on port (any address, v4 and v6). */
async function listenInodes(port: number): Promise<Set<string>> {
  const out = new Set<string>();
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(f, 'latin1').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols[3] === '0A' && cols[1]?.endsWith(`:${hexPort}`) && cols[9]) out.add(cols[9]);
    }
  }
  return out;
}

/** Socket inodes among pid's open fds. */
async function socketInodes(pid: number): Promise<Set<string>> {
  const out = new Set<string>();
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
  await Promise.all(
    fds.map(async (fd) => {
      const l = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(l);
      if (m?.[1]) out.add(m[1]);
    }),
  );
  return out;
}

// ---------------------------------------------------------------------------
// the instance

class Instance extends MasterProcess implements Cyrus {
  readonly host = '127.0.0.1';
  readonly admin = { ...ADMIN };
  readonly jmapSessionUrl: string;
  readonly confPath: string;
  readonly masterLog: string;
  readonly lmtpSocket: string;
  private finalLog: string | null = null;

  constructor(
    readonly dir: string,
    readonly tag: string,
    readonly port: number,
    readonly tlsPort: number | null,
    readonly httpPort: number,
    readonly users: Record<string, string>,
    /** size of SYSLOG_FILE when the instance was created: its lines come after */
    private readonly syslogOffset: number,
  ) {
    super();
    this.jmapSessionUrl = `http://${this.host}:${httpPort}/.well-known/jmap`;
    this.confPath = `${dir}/etc/imapd.conf`;
    this.masterLog = `${dir}/master.log`;
    this.lmtpSocket = `${dir}/conf/socket/lmtp`;
  }

  async spawnMaster(prefix: string): Promise<void> {
    const log = await open(this.masterLog, 'a');
    try {
      // Only the Cyrus processes get the private library path; the system
      // tools we run (saslpasswd2, python3) keep the system libraries.
      const child = spawn(
        `${binDir(prefix)}/master`,
        ['-C', this.confPath, '-M', `${this.dir}/etc/cyrus.conf`, '-p', `${this.dir}/master.pid`],
        {
          env: { ...process.env, LD_LIBRARY_PATH: cyrusLibPath(prefix) },
          stdio: ['ignore', log.fd, log.fd],
          // Its own process group, which is essential: on SIGTERM the master
          // signals its whole process group, and it runs as the same
          // unprivileged user as every other instance (and Dovecot's mail
          // processes), so in a shared group stopping one instance would shut
          // down all the others ("graceful shutdown initiated by unexpected
          // process"). Not unref'd: we still wait for its exit.
          detached: true,
        },
      );
      this.track(child);
    } finally {
      await log.close(); // the child has its own copy of the fd
    }
  }

  /**
   * 'ok' once the master itself holds the listening sockets of all its ports;
   * 'foreign' if somebody else listens on one of them (freePort() raced with
   * another test: Cyrus then logs "Address already in use" and just runs
   * without that service); 'waiting' otherwise.
   */
  async listenState(): Promise<'ok' | 'foreign' | 'waiting'> {
    const pid = this.pid;
    if (pid === undefined || this.exited) return 'waiting';
    // Listeners first, the master's fds second: a socket the master binds in
    // between is then seen as missing ('waiting'), never as 'foreign'.
    const ports = [this.port, this.httpPort, ...(this.tlsPort === null ? [] : [this.tlsPort])];
    const listening = await Promise.all(ports.map((p) => listenInodes(p)));
    const mine = await socketInodes(pid);
    if (listening.some((inodes) => inodes.size > 0 && ![...inodes].some((i) => mine.has(i)))) return 'foreign';
    return listening.every((inodes) => inodes.size > 0) ? 'ok' : 'waiting';
  }

  async killAll(): Promise<void> {
    // Freeze the master first so it cannot fork replacements while we sweep.
    if (!this.exited && this.pid !== undefined) signalPid(this.pid, 'SIGSTOP');
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    for (;;) {
      const pids = instancePidsSync(this.confPath, this.exited ? undefined : this.pid);
      if (!this.exited && this.pid !== undefined && !pids.includes(this.pid)) pids.push(this.pid);
      if (pids.length === 0) break;
      for (const pid of pids) signalPid(pid, 'SIGKILL');
      if (Date.now() > deadline) throw new Error(`cyrus processes still alive after SIGKILL: ${pids.join(' ')}`);
      await sleep(20);
    }
    await this.waitExit(STOP_TIMEOUT_MS);
  }

  /** Last-resort cleanup for the exit hooks, where nothing async runs. */
  killSync(): void {
    const master = this.exited ? undefined : this.pid;
    if (master !== undefined) signalPid(master, 'SIGSTOP');
    for (const pid of instancePidsSync(this.confPath, master)) signalPid(pid, 'SIGKILL');
    if (master !== undefined) signalPid(master, 'SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }

  protected async doStop(): Promise<void> {
    try {
      if (!this.exited) {
        // master: "It kills itself and all child processes when it receives a SIGTERM".
        this.child?.kill('SIGTERM');
        if (!(await this.waitExit(STOP_TIMEOUT_MS))) this.child?.kill('SIGKILL');
      }
      await this.killAll(); // sweep leftovers (e.g. after a SIGKILL of the master)
    } finally {
      this.untrack();
      await this.flushSyslog();
      this.finalLog = await this.collectLog();
      await rm(this.dir, { recursive: true, force: true });
    }
  }

  async readLog(): Promise<string> {
    if (this.finalLog !== null) return this.finalLog;
    await this.flushSyslog();
    return this.collectLog();
  }

  /**
   * Wait until every syslog message sent so far has reached SYSLOG_FILE:
   * send a marker through the same socket with logger(1) (bsdutils, always
   * installed) and wait for it to show up. One datagram socket queues all
   * senders in order, so what Cyrus logged before is in the file by then.
   * Best effort: gives up silently after a second.
   */
  async flushSyslog(): Promise<void> {
    if (!(await exists(SYSLOG_SOCKET))) return;
    const marker = `flush ${process.pid}.${++flushSeq}.${Date.now()}`;
    const from = await fileSize(SYSLOG_FILE);
    const r = await run('logger', ['-u', SYSLOG_SOCKET, '-t', `${this.tag}/harness`, marker]).catch(() => null);
    if (r?.code !== 0) return;
    const deadline = Date.now() + 1000;
    while (Date.now() < deadline) {
      const size = await fileSize(SYSLOG_FILE);
      if (size > from) {
        const fh = await open(SYSLOG_FILE, 'r');
        try {
          const buf = Buffer.alloc(size - from);
          await fh.read(buf, 0, buf.length, from);
          if (buf.includes(marker)) return;
        } finally {
          await fh.close();
        }
      }
      await sleep(5);
    }
  }

  /** master.log (our notes, the master's early stdout/stderr) + this instance's lines of SYSLOG_FILE. */
  private async collectLog(): Promise<string> {
    const master = await readFile(this.masterLog, 'utf8').catch(() => '');
    let syslog = '';
    try {
      const fh = await open(SYSLOG_FILE, 'r');
      try {
        const size = (await fh.stat()).size;
        // The receiver truncates an oversized file when it starts: then read all.
        const from = size >= this.syslogOffset ? this.syslogOffset : 0;
        const buf = Buffer.alloc(size - from);
        await fh.read(buf, 0, buf.length, from);
        const ident = ` ${this.tag}/`; // Cyrus's syslog ident is "<syslog_prefix>/<service>"
        const flushMark = ` ${this.tag}/harness`; // flushSyslog()'s markers
        syslog = buf
          .toString('utf8')
          .split('\n')
          .filter((l) => l.includes(ident) && !l.includes(flushMark))
          .join('\n');
      } finally {
        await fh.close();
      }
    } catch {
      /* no syslog file */
    }
    return `${master}${master.endsWith('\n') || !master ? '' : '\n'}---- syslog (${SYSLOG_FILE}, ident ${this.tag}/*) ----\n${syslog}${syslog ? '\n' : ''}`;
  }
}

// ---------------------------------------------------------------------------
// config

interface RunAs {
  user: string;
  group: string;
  uid: number;
  gid: number;
}

/**
 * Cyrus refuses to run as root ("must run as the Cyrus user") and the
 * `cyrus` account does not exist (the package scripts never ran): as root,
 * the master binds its ports and then drops to `mail`, which every Debian
 * has. As an ordinary user everything runs as the caller.
 */
async function runAs(): Promise<RunAs> {
  const user = isRoot() ? 'mail' : undefined;
  const q = async (flag: string) => (await runOk('id', user ? [flag, user] : [flag])).trim();
  const [uid, gid, name, group] = await Promise.all([q('-u'), q('-g'), q('-un'), q('-gn')]);
  return { user: name, group, uid: Number(uid), gid: Number(gid) };
}

/** Where startCyrus() puts its copies of opts.tls's files. */
const tlsFiles = (dir: string) => ({ cert: `${dir}/etc/server.crt`, key: `${dir}/etc/server.key` });

/** imapd.conf as ordered [key, value] pairs; comments are keys starting with '#'. */
function imapdConf(dir: string, tag: string, as: RunAs, tls: boolean): [string, string][] {
  const tlsEntries: [string, string][] = tls
    ? [
        ['# TLS: imapd -s on the imaps port, STARTTLS on the plain one (allowplaintext keeps LOGIN without it)', ''],
        ['tls_server_cert', tlsFiles(dir).cert],
        ['tls_server_key', tlsFiles(dir).key],
      ]
    : [];
  return [
    ['# paths: everything inside the private directory', ''],
    ['configdirectory', `${dir}/conf`],
    ['defaultpartition', 'default'],
    ['partition-default', `${dir}/spool`],
    ['sievedir', `${dir}/conf/sieve`],
    ['lmtpsocket', `${dir}/conf/socket/lmtp`],
    ['idlesocket', `${dir}/conf/socket/idle`],
    ['notifysocket', `${dir}/conf/socket/notify`],
    ['# the sasldb realm must equal servername', ''],
    ['servername', SERVERNAME],
    ['# syslog ident "<prefix>/<service>": how readLog() finds this instance in the shared syslog file', ''],
    ['syslog_prefix', tag],
    ['cyrus_user', as.user],
    ['cyrus_group', as.group],
    ['admins', ADMIN.user],
    ['allowplaintext', 'yes'],
    ['sasl_pwcheck_method', 'auxprop'],
    ['sasl_auxprop_plugin', 'sasldb'],
    ['sasl_sasldb_path', `${dir}/sasldb2`],
    ['sasl_mech_list', 'PLAIN LOGIN'],
    ["# modern namespace: INBOX, its children at top level, '/' separator", ''],
    ['unixhierarchysep', 'yes'],
    ['altnamespace', 'yes'],
    ['# create INBOX and these at the first IMAP login (httpd never autocreates)', ''],
    ['autocreate_quota', '0'],
    ['autocreate_inbox_folders', 'Drafts|Sent|Trash'],
    ['autocreate_subscribe_folders', 'Drafts|Sent|Trash'],
    ['xlist-drafts', 'Drafts'],
    ['xlist-sent', 'Sent'],
    ['xlist-trash', 'Trash'],
    ['# JMAP needs conversations (they also give IMAP OBJECTID THREADID)', ''],
    ['conversations', 'yes'],
    ['conversations_db', 'twoskip'],
    ['httpmodules', 'jmap'],
    ['httpallowcompress', 'no'],
    ['# fast and quiet (stock failedloginpause makes every failed login take 3 s)', ''],
    ['failedloginpause', '0'],
    ['statuscache', 'no'],
    ['expunge_mode', 'immediate'],
    ['delete_mode', 'immediate'],
    ...tlsEntries,
  ];
}

function renderImapdConf(entries: [string, string][], extra: Record<string, string>): string {
  const lines = ['# generated by test/harness/cyrus.ts -- throwaway test instance'];
  const pending = new Map(Object.entries(extra));
  for (const [k, v] of entries) {
    if (k.startsWith('#')) {
      lines.push('', k);
      continue;
    }
    // Cyrus refuses an option given twice: extraConfig replaces ours in place.
    const value = pending.has(k) ? pending.get(k) : v;
    pending.delete(k);
    lines.push(`${k}: ${value}`);
  }
  if (pending.size > 0) {
    lines.push('', '# extraConfig');
    for (const [k, v] of pending) lines.push(`${k}: ${v}`);
  }
  return lines.join('\n') + '\n';
}

function cyrusConf(p: { prefix: string; dir: string; port: number; tlsPort: number | null; httpPort: number }): string {
  const b = binDir(p.prefix);
  const c = `${p.dir}/etc/imapd.conf`;
  const imaps = p.tlsPort === null ? '' : `  imaps         cmd="${b}/imapd -s -C ${c}"  listen="127.0.0.1:${p.tlsPort}" prefork=0\n`;
  // Every command carries `-C conf`: that is also how instancePidsSync()
  // recognises this instance's processes.
  return `# generated by test/harness/cyrus.ts
START {
  recover       cmd="${b}/ctl_cyrusdb -C ${c} -r"
}
SERVICES {
  imap          cmd="${b}/imapd -C ${c}"  listen="127.0.0.1:${p.port}" prefork=1
${imaps}  http          cmd="${b}/httpd -C ${c}"  listen="127.0.0.1:${p.httpPort}" prefork=0
  lmtpunix      cmd="${b}/lmtpd -C ${c}"  listen="${p.dir}/conf/socket/lmtp" prefork=0
}
EVENTS {
  checkpoint    cmd="${b}/ctl_cyrusdb -C ${c} -c" period=30
}
DAEMON {
  idled         cmd="${b}/idled -C ${c}"
}
`;
}

// ---------------------------------------------------------------------------
// start

export async function startCyrus(opts: CyrusOptions = {}): Promise<Cyrus> {
  const users = { ...(opts.users ?? DEFAULT_USERS) };
  for (const [u, pw] of Object.entries(users)) {
    // '@' would mean virtual domains; keep names plain and safe as mailbox names.
    if (!/^[A-Za-z0-9._-]+$/.test(u) || u.startsWith('.')) throw new Error(`unsupported cyrus user name: ${JSON.stringify(u)}`);
    if (u === ADMIN.user) throw new Error(`"${ADMIN.user}" is the Cyrus admin; pick another user name`);
    // Sent as an IMAP quoted string at provisioning and via saslpasswd2's stdin.
    if (!/^[\x20-\x7e]+$/.test(pw)) throw new Error(`unsupported password for user ${u} (printable ASCII only)`);
  }
  const extra = opts.extraConfig ?? {};
  for (const [k, v] of Object.entries(extra)) {
    if (!/^[A-Za-z0-9_-]+$/.test(k) || /[\r\n]/.test(v)) throw new Error(`bad extraConfig entry ${JSON.stringify(k)}`);
  }

  const prefix = await ensureCyrusInstalled(opts.prefix);
  const as = await runAs();

  // Short path on purpose (unix sockets live under it, max 108 bytes), and
  // /tmp (1777) is traversable by the unprivileged run user, which it must
  // be for every parent directory.
  const dir = await mkdtemp(INSTANCE_MARK);
  const tag = dir.slice(dir.lastIndexOf('/') + 1); // unique: mkdtemp's suffix
  let inst: Instance | null = null;
  try {
    await chmod(dir, 0o755);
    await mkdir(`${dir}/etc`);
    await mkdir(`${dir}/spool`);
    // Cyrus does not create these; without conf/db you get "DBERROR ... skipstamp" errors.
    for (const d of ['db', 'socket', 'sieve', 'proc', 'lock', 'log', 'msg', 'user', 'quota', 'ptclient']) {
      await mkdir(`${dir}/conf/${d}`, { recursive: true });
    }
    // Realm (-u) must be the servername; plain saslpasswd2 would use the hostname.
    for (const [u, pw] of [[ADMIN.user, ADMIN.password], ...Object.entries(users)] as [string, string][]) {
      await runOk(SASLPASSWD2, ['-p', '-c', '-f', `${dir}/sasldb2`, '-u', SERVERNAME, u], { input: pw });
    }
    await chmod(`${dir}/sasldb2`, 0o640);
    const tls = opts.tls ? tlsFiles(dir) : null;
    if (opts.tls && tls) {
      await copyFile(opts.tls.certFile, tls.cert);
      await copyFile(opts.tls.keyFile, tls.key);
      await chmod(tls.cert, 0o644);
      await chmod(tls.key, 0o600);
    }
    if (isRoot()) {
      await chownTree(`${dir}/conf`, as.uid, as.gid);
      await chown(`${dir}/spool`, as.uid, as.gid);
      await chown(`${dir}/sasldb2`, as.uid, as.gid);
      if (tls) for (const f of [tls.cert, tls.key]) await chown(f, as.uid, as.gid);
    }
    const syslogOffset = await fileSize(SYSLOG_FILE);

    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      let httpPort = await freePort();
      while (httpPort === port) httpPort = await freePort();
      let tlsPort: number | null = null;
      while (tls && (tlsPort === null || tlsPort === port || tlsPort === httpPort)) tlsPort = await freePort();
      const conf = renderImapdConf(imapdConf(dir, tag, as, tls !== null), extra);
      await writeFile(`${dir}/etc/imapd.conf`, conf, { mode: 0o644 });
      await writeFile(`${dir}/etc/cyrus.conf`, cyrusConf({ prefix, dir, port, tlsPort, httpPort }), { mode: 0o644 });
      await writeFile(
        `${dir}/env.sh`,
        `# source me, then e.g.: cyr_info -C $CYRUS_CONF conf; mbpath -C $CYRUS_CONF user/alice\n` +
          `. ${prefix}/env.sh\nexport CYRUS_CONF=${dir}/etc/imapd.conf\n`,
      );
      // Right before the master starts, so that a lingering receiver of a
      // finished test process cannot decide to leave just before it runs.
      const syslogNote = await ensureSyslogCatcher();
      const imapsNote = tlsPort === null ? '' : ` imaps 127.0.0.1:${tlsPort}`;
      await writeFile(`${dir}/master.log`, `# harness: imap 127.0.0.1:${port}${imapsNote} http 127.0.0.1:${httpPort}; ${syslogNote}\n`, {
        flag: 'a',
      });

      inst = new Instance(dir, tag, port, tlsPort, httpPort, users, syslogOffset);
      await inst.spawnMaster(prefix);
      const state = await waitListening(inst);
      if (state === 'foreign' && attempt < 3) {
        await inst.abandon();
        inst = null;
        continue;
      }
      if (state !== 'ok') {
        throw new Error(
          `cyrus master ${inst.isRunning ? 'is running but does not listen on all its ports' : 'exited'}` +
            (state === 'foreign' ? ' (ports taken by another process)' : ''),
        );
      }
      await waitImapGreeting(inst);
      // One IMAP login per user autocreates INBOX, Drafts, Sent, Trash;
      // JMAP needs the INBOX to exist and httpd does not autocreate.
      await Promise.all(Object.entries(users).map(([u, pw]) => provisionUser(inst!.host, port, u, pw)));
      for (const [u, pw] of Object.entries(users)) await waitJmapSession(inst, u, pw);
      return inst;
    }
  } catch (err) {
    let log = '';
    if (inst) {
      log = await inst.readLog();
      await inst.stop().catch(() => {});
    } else {
      await rm(dir, { recursive: true, force: true });
    }
    const msg = err instanceof Error ? err.message : String(err);
    const e = new Error(`startCyrus failed: ${msg}${log ? `\nlast log lines:\n${tailLines(log, 30)}` : ''}`);
    (e as { cause?: unknown }).cause = err;
    throw e;
  }
}

async function waitListening(inst: Instance): Promise<'ok' | 'foreign' | 'waiting'> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let state: 'ok' | 'foreign' | 'waiting' = 'waiting';
  while (Date.now() < deadline && inst.isRunning) {
    state = await inst.listenState();
    if (state !== 'waiting') return state;
    await sleep(20);
  }
  return state;
}

async function waitImapGreeting(inst: Instance): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let last: string | null = null;
  let failures = 0;
  while (Date.now() < deadline && inst.isRunning) {
    const c = await LineClient.connect(inst.host, inst.port).catch(() => null);
    if (c) {
      // A healthy imapd (one is preforked) greets within milliseconds.
      last = await c.line(Math.max(100, Math.min(4000, deadline - Date.now()))).catch((e: Error) => `(${e.message})`);
      c.close();
      if (last.startsWith('* OK')) return;
      // The master listens, but imapd dies before its greeting (bad config,
      // unwritable paths) or the master gave up on the service after too
      // many failures (then nobody accepts): do not wait the full timeout.
      if (++failures >= 3) break;
    }
    await sleep(25);
  }
  throw new Error(`no IMAP greeting on ${inst.host}:${inst.port} (last: ${JSON.stringify(last)})`);
}

function imapQuote(s: string): string {
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

async function provisionUser(host: string, port: number, user: string, pw: string): Promise<void> {
  const c = await LineClient.connect(host, port);
  try {
    const greeting = await c.line();
    if (!greeting.startsWith('* OK')) throw new Error(`greeting: ${greeting}`);
    const login = await c.command('p1', `LOGIN ${imapQuote(user)} ${imapQuote(pw)}`);
    if (!login.done.startsWith('p1 OK')) throw new Error(`provisioning LOGIN ${user}: ${login.done}`);
    const list = await c.command('p2', 'LIST "" "*"');
    const names = list.untagged.filter((l) => l.startsWith('* LIST '));
    if (!list.done.startsWith('p2 OK') || !names.some((l) => /\bINBOX\b/i.test(l))) {
      throw new Error(`provisioning ${user}: no INBOX after login (${list.done}; ${names.join(' | ')})`);
    }
    await c.command('p3', 'LOGOUT');
  } finally {
    c.close();
  }
}

/** GET with Basic auth, a fresh connection (no keep-alive pool left behind), no redirects. */
function httpGet(url: string, user: string, pw: string): Promise<{ status: number; location?: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      url,
      {
        agent: false,
        timeout: 5000,
        headers: { Authorization: `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}` },
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location, body }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** Until the session resource (after its 301 to /jmap) lists a mail account for user. */
async function waitJmapSession(inst: Instance, user: string, pw: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let last = '';
  while (Date.now() < deadline && inst.isRunning) {
    try {
      let url = inst.jmapSessionUrl;
      let r = await httpGet(url, user, pw);
      for (let hops = 0; r.status >= 300 && r.status < 400 && r.location && hops < 3; hops++) {
        url = new URL(r.location, url).toString();
        r = await httpGet(url, user, pw);
      }
      if (r.status === 200) {
        const s = JSON.parse(r.body) as { accounts?: Record<string, unknown>; primaryAccounts?: Record<string, string> };
        if (s.accounts?.[user] !== undefined && s.primaryAccounts?.['urn:ietf:params:jmap:mail'] === user) return;
      }
      last = `${r.status} ${r.body.slice(0, 200)}`;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await sleep(50);
  }
  throw new Error(`JMAP session for ${user} not ready at ${inst.jmapSessionUrl} (last: ${last})`);
}

