#!/usr/bin/env python3
"""Drive an IMAP server with Python's stdlib imaplib and report as JSON.

usage: imaplib_client.py HOST PORT USER PASS [--mode login|plain] [--getjmapaccess]
                         [--tls | --starttls] [--cafile FILE]

--tls       implicit TLS from the first byte (imaplib.IMAP4_SSL)
--starttls  connect in plaintext, then STARTTLS before logging in
--cafile    the CA certificate to trust for --tls/--starttls (the server
            certificate is verified, host name included)

Prints exactly one JSON object on stdout:
  greeting_caps   capabilities before login (imaplib sends CAPABILITY on connect)
  login           "OK" | "NO" (| "BAD" if the server rejected the command syntax)
  login_error     server text of a failed login, else null
  caps_after      capabilities from a CAPABILITY command after login ([] if not logged in)
  getjmapaccess   {"typ": "OK"|"BAD", "data": [str...]} or null if not requested / not logged in
  append_uid_ok   APPEND to INBOX succeeded with an [APPENDUID ...] response code
  fetched_equal   FETCH BODY.PEEK[] of the last INBOX message returned the appended bytes exactly
Only with --tls or --starttls:
  tls_version     the negotiated protocol, e.g. "TLSv1.3"
Only with --starttls (greeting_caps are then the plaintext ones):
  starttls        "OK" once STARTTLS succeeded
  caps_after_starttls  capabilities imaplib asked for inside TLS, before login

Exit status 0 whenever the script ran to the end (also when login was NO);
non-zero only on unexpected errors (connection failure, dropped connection, ...).
"""

import argparse
import ast
import imaplib
import json
import os
import re
import ssl
import sys
import time

# RFC 9698 GETJMAPACCESS is unknown to imaplib; register it so
# _simple_command accepts it in the authenticated and selected states.
imaplib.Commands["GETJMAPACCESS"] = ("AUTH", "SELECTED")

TIMEOUT_SECS = 15


def to_str(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def error_text(exc):
    """Server text of an imaplib error.

    login() raises error(b'<text>') on NO; _command_complete() raises
    error("<CMD> command error: BAD [b'<text>']") on BAD. Return the text,
    keeping the "<CMD> command error: BAD" prefix in the latter case.
    """
    text = to_str(exc.args[0]) if exc.args else str(exc)
    m = re.match(r"^(.* command error: (?:BAD|NO)) (\[.*\])$", text, re.S)
    if m:
        try:
            parts = ast.literal_eval(m.group(2))
            return "%s %s" % (m.group(1), " ".join(to_str(p) for p in parts if p is not None))
        except (ValueError, SyntaxError):
            pass
    return text


def make_message():
    # 8-bit (raw UTF-8) body, CRLF line endings, unique enough per run.
    stamp = "%d.%d" % (time.time_ns(), os.getpid())
    return (
        "From: Alice <alice@example.test>\r\n"
        "To: Bob <bob@example.test>\r\n"
        "Subject: imaplib client test\r\n"
        "Message-ID: <%s@imaplib-client.test>\r\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Gr\u00fc\u00dfe aus K\u00f6ln \u2013 caf\u00e9 \u20ac5\r\n"
        "second line\r\n" % stamp
    ).encode("utf-8")


def do_login(imap, user, password, mode):
    """Returns (status, error_text)."""
    try:
        if mode == "plain":
            def auth_plain(_challenge):
                return ("\0%s\0%s" % (user, password)).encode("utf-8")

            imap.authenticate("PLAIN", auth_plain)
        else:
            imap.login(user, password)
        return "OK", None
    except imaplib.IMAP4.abort:
        raise  # connection trouble is unexpected, not a login result
    except imaplib.IMAP4.error as exc:
        text = error_text(exc)
        # _command_complete formats a BAD as "<CMD> command error: BAD [...]";
        # a NO from login()/authenticate() carries just the server text.
        status = "BAD" if re.search(r"command error: BAD\b", text) else "NO"
        return status, text


def do_getjmapaccess(imap):
    try:
        typ, dat = imap._simple_command("GETJMAPACCESS")
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as exc:
        return {"typ": "BAD", "data": [error_text(exc)]}
    typ, dat = imap._untagged_response(typ, dat, "JMAPACCESS")
    return {"typ": to_str(typ), "data": [to_str(d) for d in dat if d is not None]}


def append_and_fetch(imap):
    """Returns (append_uid_ok, fetched_equal)."""
    message = make_message()
    typ, dat = imap.append("INBOX", None, None, message)
    text = " ".join(to_str(d) for d in dat if d is not None)
    append_uid_ok = typ == "OK" and re.search(r"\[APPENDUID \d+ \d+\]", text, re.I) is not None

    typ, dat = imap.select("INBOX")
    if typ != "OK" or not dat or dat[0] is None:
        return append_uid_ok, False
    count = int(dat[0])
    if count < 1:
        return append_uid_ok, False
    typ, dat = imap.fetch(str(count), "(BODY.PEEK[])")
    if typ != "OK":
        return append_uid_ok, False
    # dat looks like [(b'N (BODY[] {len}', b'<literal>'), b')'].
    bodies = [part[1] for part in dat if isinstance(part, tuple) and len(part) == 2]
    fetched_equal = len(bodies) == 1 and bodies[0] == message
    return append_uid_ok, fetched_equal


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("user")
    ap.add_argument("password")
    ap.add_argument("--mode", choices=("login", "plain"), default="login")
    ap.add_argument("--getjmapaccess", action="store_true")
    tls_mode = ap.add_mutually_exclusive_group()
    tls_mode.add_argument("--tls", action="store_true")
    tls_mode.add_argument("--starttls", action="store_true")
    ap.add_argument("--cafile")
    args = ap.parse_args(argv)
    if args.cafile and not (args.tls or args.starttls):
        ap.error("--cafile needs --tls or --starttls")

    ssl_context = None
    if args.tls or args.starttls:
        # Verifies the chain and the host name (an IP address is matched
        # against the certificate's IP SANs).
        ssl_context = ssl.create_default_context(cafile=args.cafile)

    result = {
        "greeting_caps": [],
        "login": "NO",
        "login_error": None,
        "caps_after": [],
        "getjmapaccess": None,
        "append_uid_ok": False,
        "fetched_equal": False,
    }

    if args.tls:
        imap = imaplib.IMAP4_SSL(args.host, args.port, ssl_context=ssl_context, timeout=TIMEOUT_SECS)
    else:
        imap = imaplib.IMAP4(args.host, args.port, timeout=TIMEOUT_SECS)
    try:
        result["greeting_caps"] = list(imap.capabilities)
        if args.starttls:
            # starttls() refuses unless STARTTLS was advertised, and asks for
            # the capabilities again once TLS is up.
            typ, _dat = imap.starttls(ssl_context)
            result["starttls"] = to_str(typ)
            result["caps_after_starttls"] = list(imap.capabilities)
        if ssl_context is not None:
            result["tls_version"] = imap.sock.version()
        result["login"], result["login_error"] = do_login(imap, args.user, args.password, args.mode)
        if result["login"] == "OK":
            # login() does not refresh imap.capabilities; ask explicitly.
            typ, dat = imap.capability()
            if typ == "OK" and dat and dat[-1] is not None:
                result["caps_after"] = to_str(dat[-1]).upper().split()
            if args.getjmapaccess:
                result["getjmapaccess"] = do_getjmapaccess(imap)
            result["append_uid_ok"], result["fetched_equal"] = append_and_fetch(imap)
        imap.logout()
    finally:
        if imap.state != "LOGOUT":  # logout() already closed the socket
            imap.shutdown()

    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
