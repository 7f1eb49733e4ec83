import t from 'tap';
import {
  capabilityAtoms,
  classifyResponse,
  findCapabilities,
  replaceCapabilities,
  serverLiteralRule,
} from '../../src/imap/response.js';
import { INVALID_LITERAL } from '../../src/imap/literal.js';

const b = (text: string) => Buffer.from(text, 'latin1');

/** The capability list text of a line, or null. */
function capsText(line: string): string | null {
  const buffer = b(line);
  const span = findCapabilities(buffer, classifyResponse(buffer));
  return span === null ? null : buffer.toString('latin1', span.start, span.end);
}

t.test('classifyResponse: continuation requests', async (t) => {
  t.same(classifyResponse(b('+ go ahead\r\n')), { kind: 'continuation' });
  t.same(classifyResponse(b('+\r\n')), { kind: 'continuation' });
  t.same(classifyResponse(b('+ dGVzdA==\n')), { kind: 'continuation' });
  t.same(classifyResponse(b('+')), { kind: 'continuation' }, 'even without a terminator');
});

t.test('classifyResponse: message data (untagged, starting with a number)', async (t) => {
  t.same(classifyResponse(b('* 3 EXISTS\r\n')), { kind: 'message-data' });
  t.same(classifyResponse(b('* 12 FETCH (FLAGS (\\Seen))\r\n')), { kind: 'message-data' });
  t.same(classifyResponse(b('* 0 RECENT\n')), { kind: 'message-data' });
});

t.test('classifyResponse: untagged responses, status set for the five status words', async (t) => {
  t.same(classifyResponse(b('* OK [CAPABILITY IMAP4rev1] hi\r\n')), { kind: 'untagged', word: 'OK', status: 'OK', textStart: 5 });
  t.same(classifyResponse(b('* NO warning\r\n')), { kind: 'untagged', word: 'NO', status: 'NO', textStart: 5 });
  t.same(classifyResponse(b('* BAD what\r\n')), { kind: 'untagged', word: 'BAD', status: 'BAD', textStart: 6 });
  t.same(classifyResponse(b('* PREAUTH welcome\r\n')), { kind: 'untagged', word: 'PREAUTH', status: 'PREAUTH', textStart: 10 });
  t.same(classifyResponse(b('* BYE\r\n')), { kind: 'untagged', word: 'BYE', status: 'BYE', textStart: 5 }, 'no text: textStart is the content end');
  t.same(classifyResponse(b('* ok lower case\r\n')), { kind: 'untagged', word: 'OK', status: 'OK', textStart: 5 }, 'the word is upper-cased');
  t.same(classifyResponse(b('* CAPABILITY IMAP4rev1 IDLE\r\n')), { kind: 'untagged', word: 'CAPABILITY', status: null, textStart: 13 });
  t.same(classifyResponse(b('* capability imap4rev1\n')), { kind: 'untagged', word: 'CAPABILITY', status: null, textStart: 13 });
  t.same(classifyResponse(b('* LIST () "/" INBOX\r\n')), { kind: 'untagged', word: 'LIST', status: null, textStart: 7 });
  t.same(classifyResponse(b('* OKAY\r\n')), { kind: 'untagged', word: 'OKAY', status: null, textStart: 6 }, 'only whole words are statuses');
});

t.test('classifyResponse: tagged responses', async (t) => {
  t.same(classifyResponse(b('a1 OK done\r\n')), { kind: 'tagged', tag: 'a1', status: 'OK', textStart: 6 });
  t.same(classifyResponse(b('a1 NO [AUTHENTICATIONFAILED] no\r\n')), { kind: 'tagged', tag: 'a1', status: 'NO', textStart: 6 });
  t.same(classifyResponse(b('A.2 BAD\r\n')), { kind: 'tagged', tag: 'A.2', status: 'BAD', textStart: 7 });
  t.same(classifyResponse(b('a1 ok fine\n')), { kind: 'tagged', tag: 'a1', status: 'OK', textStart: 6 }, 'the status is case-insensitive');
  t.same(
    classifyResponse(b('a1 PREAUTH x\r\n')),
    { kind: 'tagged', tag: 'a1', status: null, textStart: 11 },
    'PREAUTH and BYE are never tagged statuses',
  );
  t.same(classifyResponse(b('a1 BYE x\r\n')), { kind: 'tagged', tag: 'a1', status: null, textStart: 7 });
  t.same(classifyResponse(b('a1 FOO bar\r\n')), { kind: 'tagged', tag: 'a1', status: null, textStart: 7 });
  t.same(
    classifyResponse(b('jmapaccess-proxy.1 OK done\r\n')),
    { kind: 'tagged', tag: 'jmapaccess-proxy.1', status: 'OK', textStart: 22 },
  );
});

t.test('classifyResponse: unparsable lines', async (t) => {
  for (const line of ['', '\r\n', '\n', '*\r\n', '* \r\n', '*x OK\r\n', '**\r\n', 'abc\r\n', 'abc', ' OK x\r\n']) {
    t.same(classifyResponse(b(line)), { kind: 'unparsable' }, JSON.stringify(line));
  }
});

t.test('classifyResponse never throws on arbitrary bytes', async (t) => {
  const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  for (let i = 0; i < all.length; i++) {
    t.doesNotThrow(() => classifyResponse(all.subarray(i, i + 5)));
  }
});

t.test('findCapabilities: every place a capability list can be', async (t) => {
  t.equal(capsText('* CAPABILITY IMAP4rev1 IDLE STARTTLS\r\n'), 'IMAP4rev1 IDLE STARTTLS');
  t.equal(capsText('* OK [CAPABILITY IMAP4rev1 SASL-IR] Dovecot ready.\r\n'), 'IMAP4rev1 SASL-IR');
  t.equal(capsText('* PREAUTH [CAPABILITY IMAP4rev1 IDLE] welcome\r\n'), 'IMAP4rev1 IDLE');
  t.equal(capsText('a OK [CAPABILITY IMAP4rev1 IDLE OBJECTID] Logged in\r\n'), 'IMAP4rev1 IDLE OBJECTID');
  t.equal(capsText('a NO [CAPABILITY IMAP4rev1] no\r\n'), 'IMAP4rev1', 'any status response may carry the code');
  t.equal(capsText('* BYE [CAPABILITY IMAP4rev1] bye\r\n'), 'IMAP4rev1');
  t.equal(capsText('* capability imap4rev1 idle\r\n'), 'imap4rev1 idle', 'lowercase CAPABILITY response');
  t.equal(capsText('a ok [capability imap4rev1 idle] in\r\n'), 'imap4rev1 idle', 'lowercase CAPABILITY code');
  t.equal(capsText('* OK [Capability IMAP4rev1]\r\n'), 'IMAP4rev1', 'no text after the code');
  t.equal(capsText('* CAPABILITY IMAP4rev1\n'), 'IMAP4rev1', 'bare LF');
  t.equal(capsText('* CAPABILITY\r\n'), '', 'an empty list is an empty span');
});

t.test('findCapabilities: lines without a capability list', async (t) => {
  for (const line of [
    'a OK [READ-WRITE] SELECT completed\r\n',
    'a OK done\r\n',
    '* OK [UIDVALIDITY 3] x\r\n',
    '* OK [CAPABILITYX IMAP4rev1] x\r\n',
    '* OK [CAPABILITY] x\r\n',
    '* OK [CAPABILITY IMAP4rev1 no close\r\n',
    '* OK text [CAPABILITY IMAP4rev1] later\r\n',
    '* 3 EXISTS\r\n',
    '* FLAGS (\\Seen)\r\n',
    '+ [CAPABILITY IMAP4rev1]\r\n',
    'a FOO [CAPABILITY IMAP4rev1]\r\n',
    '* LIST () "/" CAPABILITY\r\n',
    'garbage\r\n',
  ]) {
    t.equal(capsText(line), null, JSON.stringify(line));
  }
});

t.test('capabilityAtoms and replaceCapabilities', async (t) => {
  const line = b('a OK [CAPABILITY IMAP4rev1  IDLE STARTTLS] Logged in\r\n');
  const span = findCapabilities(line, classifyResponse(line));
  if (!span) throw new Error('no span');
  t.same(capabilityAtoms(line, span), ['IMAP4rev1', 'IDLE', 'STARTTLS'], 'double spaces make no empty atoms');
  t.equal(
    replaceCapabilities(line, span, ['IMAP4rev1', 'IDLE', 'JMAPACCESS']).toString('latin1'),
    'a OK [CAPABILITY IMAP4rev1 IDLE JMAPACCESS] Logged in\r\n',
  );
  const untagged = b('* CAPABILITY IMAP4rev1 STARTTLS\r\n');
  const untaggedSpan = findCapabilities(untagged, classifyResponse(untagged));
  if (!untaggedSpan) throw new Error('no span');
  t.equal(replaceCapabilities(untagged, untaggedSpan, ['IMAP4rev1']).toString('latin1'), '* CAPABILITY IMAP4rev1\r\n');
  t.equal(replaceCapabilities(untagged, untaggedSpan, []).toString('latin1'), '* CAPABILITY \r\n');
});

t.test('serverLiteralRule: status responses and continuations never announce literals on their first line', async (t) => {
  t.equal(serverLiteralRule(b('* OK text {5}\r\n'), true), null);
  t.equal(serverLiteralRule(b('a NO bad {99999999999999999999}\r\n'), true), null, 'not even an impossible one');
  t.equal(serverLiteralRule(b('+ {5}\r\n'), true), null);
  t.same(serverLiteralRule(b('* 1 FETCH (BODY[] {5}\r\n'), true), { size: 5, synchronizing: true, binary: false });
  t.same(serverLiteralRule(b('* LIST () "/" {5}\r\n'), true), { size: 5, synchronizing: true, binary: false });
  t.same(serverLiteralRule(b('* OK text {5}\r\n'), false), { size: 5, synchronizing: true, binary: false }, 'continuation lines do');
  t.equal(serverLiteralRule(b('* 1 FETCH (BODY[] {99999999999999999999}\r\n'), true), INVALID_LITERAL);
  t.equal(serverLiteralRule(b('* 1 FETCH (FLAGS ())\r\n'), true), null);
});
